"""Admission: which limits a request is charged to, and its prompt tokens for TPM/budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from qwen_gateway.core.types import ChatRequest, GenerationRequest
from qwen_gateway.policy.principal import Limits, Principal
from qwen_gateway.policy.ratelimit import Limiter, Permit, Subject
from qwen_gateway.qwen.limits import check_prompt_size, prompt_chars
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import QwenTokenizer, tokenized


class Gate:
    def __init__(self, limiter: Limiter, model_limits: Mapping[str, Limits]) -> None:
        self.limiter = limiter
        self._model_limits = {k: v for k, v in model_limits.items() if v.any}
        self._tokenizer: QwenTokenizer | None = None
        self._template: ChatTemplate | None = None
        #: The largest context window served (a request may fall back to any deployment):
        #: prompts far beyond it are refused untokenised.
        self.context_window: Callable[[], int] | None = None

    async def start(self) -> None:
        self._template = ChatTemplate(packaged_template_source())

    def subjects(self, principal: Principal, model: str) -> list[Subject]:
        out = []
        if principal.limits.any:
            out.append(Subject(principal.id, principal.limits))
        model_limits = self._model_limits.get(model)
        if model_limits is not None:
            out.append(Subject(f"model:{model}", model_limits))
        return out

    async def prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length in Qwen tokens, as the engine will see it. The vocabulary
        (~60 MB) is loaded the first time a token limit applies. Text far beyond the model's
        window is refused untokenised; long text is tokenised in a worker thread."""
        if not isinstance(request, ChatRequest) and not isinstance(request.prompt, str):
            return len(request.prompt)
        window = self.context_window
        chars = (
            check_prompt_size(request, window()) if window is not None else prompt_chars(request)
        )
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(QwenTokenizer.builtin)
        tokenizer, template = self._tokenizer, self._template
        if template is None:
            raise RuntimeError("Gate.start() was not awaited")

        def count() -> int:
            if isinstance(request, ChatRequest):
                pieces = template.render(request.messages, request.tools)
                return len(tokenizer.encode_pieces(pieces))
            assert isinstance(request.prompt, str)
            return len(tokenizer.encode_raw(request.prompt))

        return await tokenized(count, chars)

    async def admit(self, principal: Principal, request: GenerationRequest) -> Permit | None:
        subjects = self.subjects(principal, request.model)
        if not subjects:
            return None
        counts = any(s.limits.counts_tokens for s in subjects)
        tokens = await self.prompt_tokens(request) if counts else 0
        return await self.limiter.acquire(subjects, tokens)

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        await self.limiter.settle(permit, completion_tokens)

    async def aclose(self) -> None:
        await self.limiter.aclose()
