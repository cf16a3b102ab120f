"""Admission: which limits a request is charged to, and the tokens it may use (its prompt, and
n × its effective max_tokens reserved for the completion) for TPM and budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatRequest, EmbeddingRequest, GenerationRequest, ModelInfo
from qwen_gateway.policy.principal import Limits, Principal
from qwen_gateway.policy.ratelimit import Limiter, Permit, Subject
from qwen_gateway.qwen.counting import count_prompt_tokens
from qwen_gateway.qwen.limits import check_prompt_size, prompt_chars
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import QwenTokenizer, tokenized


class Gate:
    def __init__(
        self,
        limiter: Limiter,
        model_limits: Mapping[str, Limits],
        context_window: Callable[[], int] | None = None,
    ) -> None:
        self.limiter = limiter
        self._model_limits = {k: v for k, v in model_limits.items() if v.any}
        self._tokenizer: QwenTokenizer | None = None
        self._template: ChatTemplate | None = None
        #: The largest context window served (a request may fall back to any deployment):
        #: prompts far beyond it are refused untokenised.
        self.context_window = context_window

    async def start(self) -> None:
        self._template = ChatTemplate(packaged_template_source())

    def subjects(
        self, principal: Principal, deployment: str, asked: str | None = None
    ) -> list[Subject]:
        """The caller's own limits, then the shared ones (``limits.models``) of the public name
        ``asked`` (a split or the intent model) and of the deployment that serves."""
        out = []
        if principal.limits.any:
            out.append(Subject(principal.id, principal.limits))
        for model in dict.fromkeys(m for m in (asked, deployment) if m is not None):
            model_limits = self._model_limits.get(model)
            if model_limits is not None:
                out.append(Subject(f"model:{model}", model_limits, shared=True))
        return out

    def admission(
        self,
        principal: Principal,
        request: GenerationRequest | EmbeddingRequest,
        record: RequestRecord,
        asked: str | None = None,
    ) -> Admission:
        return Admission(self, principal, request, record, asked)

    async def prompt_tokens(self, request: GenerationRequest | EmbeddingRequest) -> int:
        """The prompt's length in Qwen tokens, as the engine will see it. The vocabulary
        (~60 MB) is loaded the first time a token limit applies. Text far beyond the model's
        window is refused untokenised; long text is tokenised in a worker thread."""
        if isinstance(request, EmbeddingRequest):
            return await self._input_tokens(request)
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

        return await tokenized(lambda: count_prompt_tokens(tokenizer, template, request), chars)

    async def _input_tokens(self, request: EmbeddingRequest) -> int:
        """An embeddings request's tokens: each input's, and the <|endoftext|> it ends with."""
        texts = [x for x in request.inputs if isinstance(x, str)]
        ids = sum(len(x) + 1 for x in request.inputs if not isinstance(x, str))
        if not texts:
            return ids
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(QwenTokenizer.builtin)
        tokenizer = self._tokenizer

        def count() -> int:
            return sum(len(tokenizer.encode_text(t)) + 1 for t in texts)

        return ids + await tokenized(count, sum(len(t) for t in texts))

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        await self.limiter.settle(permit, completion_tokens)

    async def aclose(self) -> None:
        await self.limiter.aclose()


class Admission:
    """One request's admission, called by the router for each deployment it is about to try
    (before the first token): charges the limits of that deployment and the caller's own, and
    keeps the permit on the record (settled when the request ends). Failing over to another
    deployment moves the charge (released, then admitted anew), so the request counts once."""

    def __init__(
        self,
        gate: Gate,
        principal: Principal,
        request: GenerationRequest | EmbeddingRequest,
        record: RequestRecord,
        asked: str | None,
    ) -> None:
        self._gate, self._principal, self._request = gate, principal, request
        self._record, self._asked = record, asked
        self._prompt: int | None = None

    async def __call__(self, deployment: str, info: ModelInfo) -> None:
        request, record = self._request, self._record
        subjects = self._gate.subjects(self._principal, deployment, self._asked)
        prompt = reserve = 0
        if any(s.limits.counts_tokens for s in subjects):
            if self._prompt is None:
                self._prompt = await self._gate.prompt_tokens(request)
            prompt = self._prompt
            if not isinstance(request, EmbeddingRequest):  # embeddings produce no tokens
                reserve = request.n * output_limit(request, info, prompt)
        held: Permit | None = record.permit
        if held is not None:
            if held.subjects == tuple(subjects) and held.charged == prompt + reserve:
                return  # the same limits and charge: nothing to move
            record.permit = None
            await self._gate.limiter.release(held)
        if subjects:
            n = 1 if isinstance(request, EmbeddingRequest) else request.n
            record.permit = await self._gate.limiter.acquire(subjects, prompt, reserve, n)


def output_limit(request: GenerationRequest, info: ModelInfo, prompt_tokens: int) -> int:
    """The most completion tokens one choice may produce on this deployment: the request's
    max_tokens, or the deployment's output limit, within what its window leaves."""
    s = request.sampling
    wanted = s.max_tokens or min(
        s.default_max_tokens or info.max_output_tokens, info.max_output_tokens
    )
    return max(0, min(wanted, info.context_window - prompt_tokens))
