"""The admit stage hands the router the gate's admission: it charges the caller's limits for
the deployment tried, and keeps the permit on the record for the account stage."""

from __future__ import annotations

import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatMessage, ChatRequest, ModelInfo
from qwen_gateway.errors import RateLimited
from qwen_gateway.policy.gate import Gate
from qwen_gateway.policy.principal import Limits, Principal
from qwen_gateway.policy.ratelimit import LocalLimiter
from qwen_gateway.service.admit import Admit

INFO = ModelInfo(id="m", context_window=4096, max_output_tokens=256)
REQUEST = ChatRequest("m", (ChatMessage("user", "hi"),))


async def test_admission_charges_the_deployment_tried_and_keeps_the_permit() -> None:
    gate = Gate(LocalLimiter(60), {})
    await gate.start()
    admit = Admit(gate)
    caller = Principal("key:1", limits=Limits(rpm=1))
    first = RequestRecord("a")
    await admit.hook(caller, REQUEST, first, None)("m", INFO)
    assert first.permit is not None
    with pytest.raises(RateLimited):
        await admit.hook(caller, REQUEST, RequestRecord("b"), None)("m", INFO)


async def test_a_caller_without_limits_holds_no_permit() -> None:
    gate = Gate(LocalLimiter(60), {})
    await gate.start()
    record = RequestRecord("a")
    await Admit(gate).hook(Principal("key:1"), REQUEST, record, None)("m", INFO)
    assert record.permit is None
