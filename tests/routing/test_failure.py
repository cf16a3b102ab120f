"""The failure table: which errors fail over, which trip the breaker, which go to the client."""

from __future__ import annotations

import asyncio

import pytest

from qwen_gateway.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineOverloaded,
    EngineUnavailable,
    GatewayError,
    GatewayTimeout,
    InternalError,
    InvalidModelOutput,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
)
from qwen_gateway.routing.failure import (
    Action,
    Outcome,
    Verdict,
    after_first_event,
    as_gateway_error,
    before_first_event,
)

NEXT_REPLICA, NEXT_DEPLOYMENT, TO_CLIENT = (
    Action.NEXT_REPLICA,
    Action.NEXT_DEPLOYMENT,
    Action.TO_CLIENT,
)
FAILURE, NEUTRAL = Outcome.FAILURE, Outcome.NEUTRAL


@pytest.mark.parametrize(
    ("error", "action", "breaker"),
    [
        (ContextLengthExceeded("too long"), NEXT_DEPLOYMENT, NEUTRAL),
        (InvalidModelOutput("arguments do not match"), TO_CLIENT, NEUTRAL),
        (RateLimited("busy upstream"), NEXT_REPLICA, NEUTRAL),
        (EngineOverloaded("queue full"), NEXT_REPLICA, NEUTRAL),
        (EngineUnavailable("down"), NEXT_REPLICA, FAILURE),
        (UpstreamError("502 from the upstream"), NEXT_REPLICA, FAILURE),
        (GatewayTimeout("no first byte"), NEXT_REPLICA, FAILURE),
        (AuthenticationFailed("the replica's key"), NEXT_REPLICA, FAILURE),
        (PermissionDenied("the replica's key"), NEXT_REPLICA, FAILURE),
        (ModelNotFound("the replica's model"), NEXT_REPLICA, FAILURE),
        (InvalidRequest("bad temperature", param="temperature"), TO_CLIENT, NEUTRAL),
        (InternalError("a bug the engine reported itself"), TO_CLIENT, NEUTRAL),
        (RuntimeError("a plugin engine crashed"), NEXT_REPLICA, FAILURE),
        (ValueError("a bug in an engine"), NEXT_REPLICA, FAILURE),
        (asyncio.CancelledError(), TO_CLIENT, NEUTRAL),
        (KeyboardInterrupt(), TO_CLIENT, NEUTRAL),
    ],
)
def test_a_failure_before_the_first_event(
    error: BaseException, action: Action, breaker: Outcome
) -> None:
    assert before_first_event(error) == Verdict(action, breaker)


@pytest.mark.parametrize(
    ("error", "breaker"),
    [
        (UpstreamError("the replica died mid-stream"), FAILURE),
        (EngineUnavailable("gone"), FAILURE),
        (EngineOverloaded("busy"), FAILURE),
        (InvalidModelOutput("arguments do not match"), NEUTRAL),
        (InvalidRequest("a client error"), NEUTRAL),
        (RateLimited("429"), NEUTRAL),
        (RuntimeError("a plugin engine crashed"), FAILURE),
        (asyncio.CancelledError(), NEUTRAL),
        (GeneratorExit(), NEUTRAL),
    ],
)
def test_a_failure_after_the_first_event_never_fails_over(
    error: BaseException, breaker: Outcome
) -> None:
    assert after_first_event(error) is breaker


def test_an_engine_bug_stands_as_an_internal_error_naming_only_its_type() -> None:
    own = UpstreamError("502")
    assert as_gateway_error(own) is own
    bug = as_gateway_error(KeyError("secret prompt text"))
    assert isinstance(bug, InternalError) and not isinstance(bug, InvalidRequest)
    assert bug.message == "The engine failed (KeyError)."
    assert isinstance(bug, GatewayError) and bug.status_code == 500
