"""The admit stage: the caller's limits and the shared ones of the model it asked for.

Admission runs inside the route stage, for each deployment the router is about to try (the
deployment that actually serves is the one authorised and charged; failing over moves the
charge): this stage hands the router that hook.
"""

from __future__ import annotations

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EmbeddingRequest, GenerationRequest
from qwen_gateway.policy.gate import Gate
from qwen_gateway.policy.principal import Principal
from qwen_gateway.routing.retry import Admit as RouterAdmit


class Admit:
    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def hook(
        self,
        principal: Principal,
        request: GenerationRequest | EmbeddingRequest,
        record: RequestRecord,
        asked: str | None,
    ) -> RouterAdmit:
        """The admission the router calls per deployment; ``asked``: the split or intent
        model the client named (its shared limits apply too), None for a deployment."""
        return self._gate.admission(principal, request, record, asked)
