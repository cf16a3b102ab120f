"""The normalise stage: an API edge's wire body becomes the core request (every 400 with its
``param``), and a request that names no ``max_tokens`` gets the caller's default output, else
the model's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from qwen_gateway.core.normalize import RequestLimits, chat_request, text_request
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatRequest, GenerationRequest, ModelInfo, TextRequest
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.protocol.chat import ChatCompletionRequest
from qwen_gateway.protocol.completions import CompletionRequest
from qwen_gateway.routing.router import Router

R = TypeVar("R", bound=GenerationRequest)


class Normalise:
    def __init__(self, router: Router, limits: RequestLimits) -> None:
        self._router = router
        self._limits = limits

    def chat(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> tuple[ChatCompletionRequest, ChatRequest]:
        wire, request = chat_request(raw, self._limits, record.request_id)
        record.stream = wire.stream
        return wire, self.default_output(request, record)

    def text(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> tuple[CompletionRequest, TextRequest]:
        wire, request = text_request(raw, self._limits, record.request_id)
        record.stream = wire.stream
        return wire, self.default_output(request, record)

    def default_output(self, request: R, record: RequestRecord) -> R:
        """A request naming no max_tokens gets the caller's default, else the model's; both
        capped by the model's output limit."""
        if request.sampling.max_tokens is not None:
            return request
        principal = record.principal if isinstance(record.principal, Principal) else ANONYMOUS
        info: ModelInfo = self._router.info(request.model)
        default = principal.default_max_tokens or info.default_max_tokens
        if default is None:
            return request
        limit = min(default, info.max_output_tokens)
        return replace(request, sampling=replace(request.sampling, default_max_tokens=limit))
