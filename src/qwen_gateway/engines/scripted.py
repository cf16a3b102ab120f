"""A scripted text backend: replays fixed model output through the real prompt pipeline.

For demos and tests of behaviour that a random-weight model cannot show on purpose (a model
that *decides* to call a tool in ``tool_choice: auto``). Everything around it is the product:
the chat template, tokenizer, limits, tool-call parser and response shaping. Register it as
engine kind ``scripted`` with the ``replies`` option.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    ModelInfo,
    OutputConstraint,
    SamplingParams,
    TextDelta,
    Usage,
    UsageMeter,
)
from qwen_gateway.engines.base import EngineStats
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import QwenTokenizer


class ScriptedBackend:
    """Answers every request with the next of ``replies`` (cycling), token by token."""

    def __init__(self, name: str, replies: Sequence[str], context_window: int = 32768) -> None:
        self._info = ModelInfo(
            id=name, context_window=context_window, max_output_tokens=min(8192, context_window)
        )
        self._replies = itertools.cycle(list(replies) or [""])
        self.tokenizer: QwenTokenizer | None = None
        self.template: ChatTemplate | None = None
        self.requests: list[list[int]] = []  # prompts seen, for inspection

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        self.tokenizer = QwenTokenizer.builtin()
        self.template = ChatTemplate(packaged_template_source())

    async def ready(self) -> bool:
        return self.tokenizer is not None

    def stats(self) -> EngineStats:
        return EngineStats()

    async def aclose(self) -> None:
        return None

    async def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        n: int,
        request_id: str,
        constraint: OutputConstraint | None = None,
        meter: UsageMeter | None = None,
        tenant: str = "",
    ) -> AsyncGenerator[EngineEvent, None]:
        assert self.tokenizer is not None
        self.requests.append(list(prompt))
        reply = next(self._replies)
        ids = self.tokenizer.encode_raw(reply)
        budget = sampling.max_tokens or len(ids)
        completion = 0
        for index in range(n):
            decoder = self.tokenizer.decoder()
            for token in ids[:budget]:
                completion += 1
                if meter is not None:
                    meter.completion_tokens += 1
                text = decoder.push(token)
                if text:
                    yield TextDelta(index, text)
            tail = decoder.flush()
            if tail:
                yield TextDelta(index, tail)
            yield ChoiceFinished(index, "length" if len(ids) > budget else "stop")
        yield Usage(len(prompt), completion)


def create_engine(options: Mapping[str, Any]) -> PromptEngine:
    """Entry point ``qwen_gateway.engines: scripted``; options: served_name, replies,
    context_window."""
    return PromptEngine(
        ScriptedBackend(
            str(options.get("served_name", "scripted")),
            list(options["replies"]),
            int(options.get("context_window", 32768)),
        )
    )
