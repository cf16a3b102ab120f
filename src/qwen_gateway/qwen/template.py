"""Chat template rendering, exactly as transformers' ``apply_chat_template`` renders it.

The output is a list of :class:`Piece`: added tokens the *template* wrote, and plain text.
Text that merely looks like a control token (``<|im_start|>`` inside a message or a tool
description) is escaped before rendering and comes back as plain text, so a user cannot
open a new role.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Template, Undefined
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwen_gateway.core.types import ChatMessage
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.qwen.tokenizer import QWEN25_ADDED_TOKENS, Piece

_ESC = "\U000f0000"  # private-use code point: marks escaped text while rendering
_ESC_SELF = _ESC + "e"
_ESC_CONTROL = _ESC + "c"
_UNESCAPE = re.compile(re.escape(_ESC) + "[ec]")

__all__ = ["ChatTemplate", "messages_to_template_input", "packaged_template_source"]


def packaged_template_source() -> str:
    """The Qwen2.5-Instruct chat template shipped with this package."""
    return resources.files("qwen_gateway.qwen").joinpath("chat_template.jinja").read_text("utf-8")


def _tojson(value: Any, indent: int | None = None) -> str:
    # transformers' tojson: no HTML escaping, non-ASCII kept, key order kept.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise(message: str) -> Undefined:
    raise TemplateError(message)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        if _ESC in value:
            value = value.replace(_ESC, _ESC_SELF)
        return value.replace("<|", _ESC_CONTROL) if "<|" in value else value
    if isinstance(value, Mapping):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape(v) for v in value]
    return value


def _unescape(text: str) -> str:
    if _ESC not in text:
        return text
    return _UNESCAPE.sub(lambda m: "<|" if m.group(0) == _ESC_CONTROL else _ESC, text)


class ChatTemplate:
    """A compiled chat template plus the added tokens it may write."""

    def __init__(self, source: str, added_tokens: Iterable[str] = QWEN25_ADDED_TOKENS) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[loopcontrols],
            undefined=Undefined,
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        self.source = source
        self._template: Template = env.from_string(source)
        tokens = sorted(set(added_tokens), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")
        self._added = frozenset(tokens)

    @classmethod
    def from_dir(cls, directory: Path) -> ChatTemplate:
        """The template in ``tokenizer_config.json``, or the packaged Qwen2.5 one."""
        path = Path(directory) / "tokenizer_config.json"
        source: str | None = None
        added: list[str] = list(QWEN25_ADDED_TOKENS)
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            raw = config.get("chat_template")
            if isinstance(raw, list):  # named templates: take the default one
                raw = next((t.get("template") for t in raw if t.get("name") == "default"), None)
            source = raw if isinstance(raw, str) else None
            decoder = config.get("added_tokens_decoder") or {}
            added = [t["content"] for t in decoder.values()] or added
        return cls(source or packaged_template_source(), added)

    def render_text(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render plain template input (dicts), exactly as transformers would."""
        return self._template.render(
            messages=list(messages),
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            bos_token="",
            eos_token="<|im_end|>",
        )

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]] = (),
        *,
        add_generation_prompt: bool = True,
    ) -> list[Piece]:
        """Render a conversation to pieces; control-token text from users stays plain text."""
        try:
            rendered = self.render_text(
                _escape(messages_to_template_input(messages)),
                _escape(list(tools)) if tools else None,
                add_generation_prompt=add_generation_prompt,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"The chat template rejected the messages: {exc}") from exc
        pieces: list[Piece] = []
        for part in self._split.split(rendered):
            if not part:
                continue
            if part in self._added:
                pieces.append(Piece(part, special=True))
            else:
                pieces.append(Piece(_unescape(part), special=False))
        return pieces


def messages_to_template_input(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Core messages as the dicts a Hugging Face chat template expects."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            item["name"] = m.name
        out.append(item)
    return out
