"""A scripted text backend: replays fixed model output through the real prompt pipeline.

For demos and tests of behaviour that a random-weight model cannot show on purpose (a model
that *decides* to call a tool in ``tool_choice: auto``). Everything around it is the product:
the chat template, tokenizer, limits, tool-call parser and response shaping. Register it as
engine kind ``scripted`` with the ``replies`` option.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Sequence

from pydantic import Field

from qwen_gateway.core.types import ChoiceFinished, EngineEvent, ModelInfo, TextDelta, Usage
from qwen_gateway.engines.base import (
    QUIET,
    READY,
    Engine,
    EngineHealth,
    EngineObserver,
    GenerationJob,
)
from qwen_gateway.engines.plugin import EngineConfig, EngineContext, EnginePlugin
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.qwen.tokenizer import QwenTokenizer


class ScriptedConfig(EngineConfig):
    """``options`` of an ``engine: scripted`` deployment."""

    replies: list[str]  # answered in turn, cycling
    context_window: int = Field(default=32768, ge=16)

    def expected_info(self, ctx: EngineContext) -> ModelInfo:
        return _info(ctx.served_name, self.context_window)


def _info(name: str, context_window: int) -> ModelInfo:
    return ModelInfo(
        id=name, context_window=context_window, max_output_tokens=min(8192, context_window)
    )


class ScriptedBackend:
    """Answers every request with the next of ``replies`` (cycling), token by token."""

    def __init__(
        self,
        name: str,
        replies: Sequence[str],
        context_window: int = 32768,
        tokenizer: QwenTokenizer | None = None,
    ) -> None:
        self._info = _info(name, context_window)
        self._replies = itertools.cycle(list(replies) or [""])
        self.tokenizer = tokenizer or QwenTokenizer.builtin()
        self.requests: list[list[int]] = []  # prompts seen, for inspection

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def health(self) -> EngineHealth:
        return READY

    async def aclose(self) -> None:
        return None

    async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        self.requests.append(list(job.prompt))
        reply = next(self._replies)
        ids = self.tokenizer.encode_raw(reply)
        max_tokens = job.sampling.max_tokens
        budget = len(ids) if max_tokens is None else max_tokens  # 0: echo only
        completion = 0
        for index in range(job.n):
            decoder = self.tokenizer.decoder()
            for token in ids[:budget]:
                completion += 1
                if job.meter is not None:
                    job.meter.completion_tokens += 1
                text = decoder.push(token)
                if text:
                    yield TextDelta(index, text)
            tail = decoder.flush()
            if tail:
                yield TextDelta(index, tail)
            yield ChoiceFinished(index, "length" if len(ids) > budget else "stop")
        yield Usage(len(job.prompt), completion)


def scripted_engine(
    name: str,
    replies: Sequence[str],
    context_window: int = 32768,
    observer: EngineObserver = QUIET,
) -> PromptEngine:
    """A scripted engine, ready at once (for tests and demos)."""
    return PromptEngine(ScriptedBackend(name, replies, context_window), observer=observer)


async def create_engine(config: ScriptedConfig, ctx: EngineContext) -> Engine:
    await asyncio.to_thread(QwenTokenizer.builtin)  # the vocabulary, loaded off the event loop
    return scripted_engine(ctx.served_name, config.replies, config.context_window, ctx.observer)


PLUGIN = EnginePlugin("scripted", ScriptedConfig, create_engine)
