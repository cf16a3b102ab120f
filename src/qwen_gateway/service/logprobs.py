"""Token logprobs in OpenAI's two wire shapes: chat's ``logprobs.content`` list and legacy
completions' parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset``)."""

from __future__ import annotations

from collections.abc import Iterable

from qwen_gateway.core.types import TokenLogprob
from qwen_gateway.protocol.chat import ChatCompletionTokenLogprob, ChoiceLogprobs
from qwen_gateway.protocol.completions import CompletionLogprobs
from qwen_gateway.qwen.tokenizer import utf8_boundary


def chat_logprobs(entries: Iterable[TokenLogprob]) -> ChoiceLogprobs:
    content: list[ChatCompletionTokenLogprob] = [
        {
            "token": e.token,
            "logprob": e.logprob if e.logprob is not None else 0.0,
            "bytes": list(e.bytes),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob or 0.0, "bytes": list(t.bytes)}
                for t in e.top
            ],
        }
        for e in entries
    ]
    return {"content": content, "refusal": None}


class CompletionLogprobsBuilder:
    """Builds one choice's completions logprobs; ``text_offset`` counts characters of the
    choice's text (the echoed prompt included), a token that ends inside a character being
    placed where that character starts."""

    def __init__(self, offset: int = 0) -> None:
        self._chars = offset
        self._partial = b""

    def skip(self, text: str) -> None:
        """Text with no logprobs before what comes next (the echoed prompt, when its tokens
        are not known)."""
        self._chars += len(text)

    def add(self, entries: Iterable[TokenLogprob]) -> CompletionLogprobs:
        out: CompletionLogprobs = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for e in entries:
            out["tokens"].append(e.token)
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append(
                None if e.logprob is None else {t.token: t.logprob or 0.0 for t in e.top}
            )
            out["text_offset"].append(self._chars)
            data = self._partial + bytes(e.bytes)
            cut = utf8_boundary(data)
            self._chars += len(data[:cut].decode("utf-8", errors="replace"))
            self._partial = data[cut:]
        return out


def merge(into: CompletionLogprobs, more: CompletionLogprobs) -> None:
    into["tokens"].extend(more["tokens"])
    into["token_logprobs"].extend(more["token_logprobs"])
    into["top_logprobs"].extend(more["top_logprobs"])
    into["text_offset"].extend(more["text_offset"])
