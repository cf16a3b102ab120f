"""The route stage (with the engine behind it): the caller's allowlist, then the router's plan
of deployments, admission for each one tried, failover before the first event, and the events
of the engine that answers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatRequest, EmbeddingRequest, EngineEvent, GenerationRequest
from qwen_gateway.policy.auth import check_model
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.routing.registry import RouteContext
from qwen_gateway.routing.router import Router
from qwen_gateway.service.admit import Admit


class Route:
    def __init__(self, router: Router, admit: Admit | None = None) -> None:
        self._router = router
        self._admit = admit

    def __call__(
        self, request: GenerationRequest | EmbeddingRequest, record: RequestRecord, user: str | None
    ) -> AsyncGenerator[EngineEvent, None]:
        """The routed event stream, for a model name the caller is allowed; it routes and
        starts the engine at its first ``anext``. The router serves the request only from
        deployments the caller may use, and admits it (limits) for the one it tries (the
        permit, on the record, is settled by the account stage)."""
        router = self._router
        router.check(request.model)
        record.model = request.model
        principal = record.principal if isinstance(record.principal, Principal) else ANONYMOUS
        # an alias is its deployment: allowed when either name is
        canonical = router.canonical(request.model)
        if canonical == request.model or not principal.allows(canonical):
            check_model(principal, request.model)
        ctx = RouteContext(principal.id, user, principal.models)
        if isinstance(request, ChatRequest):
            request = replace(request, tenant=principal.id)
        admit = None
        if self._admit is not None:
            asked = canonical if router.virtual(canonical) else None
            admit = self._admit.hook(principal, request, record, asked)
        return router.stream(request, ctx, record, admit)
