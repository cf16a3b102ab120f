"""Turns a prompt-level :class:`TokenBackend` into an :class:`Engine`.

Qwen logic lives here once for every prompt-level backend: the chat template, the
tokenizer (control-token text in messages stays text) and the context/output limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from qwen_gateway.core.types import (
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    TextRequest,
)
from qwen_gateway.engines.base import (
    QUIET,
    EngineHealth,
    EngineObserver,
    GenerationJob,
    TokenBackend,
)
from qwen_gateway.engines.output import checked_json, with_tool_calls
from qwen_gateway.qwen.counting import prompt_ids
from qwen_gateway.qwen.limits import check_prompt_size, output_budget
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, THREAD_MIN_CHARS, QwenTokenizer


class PromptEngine:
    """Renders chat requests with the model's template and streams from the backend.

    ``tokenizer`` and ``template`` are the model's own (default: the built-in Qwen2.5 ones).
    """

    def __init__(
        self,
        backend: TokenBackend,
        tokenizer: QwenTokenizer | None = None,
        template: ChatTemplate | None = None,
        observer: EngineObserver = QUIET,
    ) -> None:
        self._backend = backend
        self._tokenizer = tokenizer or QwenTokenizer.builtin()
        self._template = template or ChatTemplate(packaged_template_source())
        self._observer = observer

    @property
    def info(self) -> ModelInfo:
        return self._backend.info

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_ids(self._tokenizer, self._template, request)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        """Text far beyond the window is refused untokenised; long text is tokenised in a
        worker thread, so that the event loop serves other requests meanwhile."""
        if check_prompt_size(request, self.info.context_window) > THREAD_MIN_CHARS:
            return self._tokenized_in_thread(request)
        return self._events(request, self.prompt_ids(request))

    async def _tokenized_in_thread(
        self, request: GenerationRequest
    ) -> AsyncGenerator[EngineEvent, None]:
        ids = await asyncio.to_thread(self.prompt_ids, request)
        async with aclosing(self._events(request, ids)) as events:
            async for event in events:
                yield event

    def _events(
        self, request: GenerationRequest, ids: list[int]
    ) -> AsyncGenerator[EngineEvent, None]:
        info = self.info
        s = request.sampling
        budget = output_budget(
            len(ids), s.max_tokens, info.context_window, info.max_output_tokens,
            s.default_max_tokens,
        )  # fmt: skip
        sampling = replace(request.sampling, max_tokens=budget)
        if isinstance(request, TextRequest) and not ids:
            ids = [ENDOFTEXT_ID]
        request.meter.prompt_tokens = len(ids)
        if isinstance(request, TextRequest):
            return self._backend.generate(
                GenerationJob(ids, sampling, request.n, request.request_id, meter=request.meter)
            )
        job = GenerationJob(
            ids, sampling, request.n, request.request_id, request.constraint, request.meter,
            request.tenant,
        )  # fmt: skip
        events = self._backend.generate(job)
        constraint = request.constraint
        if constraint is not None and constraint.kind == "json" and not info.enforces_constraints:
            events = checked_json(events, constraint.schema)
        if not request.tools:
            return events
        return with_tool_calls(events, request.tool_names, self._observer.malformed_tool_calls)

    async def health(self) -> EngineHealth:
        return await self._backend.health()

    async def aclose(self) -> None:
        await self._backend.aclose()
