"""What an engine's failure means for routing: whether the request goes to the next replica,
to the next deployment, or back to the client as it is, and what the replica's breaker is told.

Before the first event (:func:`before_first_event`), the table reads top to bottom:

=================================  ===================  =========  ============================
error                              action               breaker    why
=================================  ===================  =========  ============================
ContextLengthExceeded              next deployment      neutral    a larger window may fit it
InvalidModelOutput                 to the client        neutral    the model's answer, not a
                                                                   fault of the replica
RateLimited, EngineOverloaded      next replica         neutral    busy, not broken
other retryable GatewayError       next replica         failure    the replica is down
AuthenticationFailed,              next replica         failure    the replica is misconfigured
PermissionDenied, ModelNotFound                                    (its key, its model)
other GatewayError                 to the client        neutral    the client's mistake
any other Exception                next replica         failure    an engine bug (logged)
BaseException (cancelled)          to the client        neutral    the client went away
=================================  ===================  =========  ============================

After the first event nothing fails over (:func:`after_first_event`): a 5xx GatewayError other
than InvalidModelOutput, or any other Exception, is a failure of the replica; anything else
(a client error, the client going away) leaves the breaker as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from qwen_gateway.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineOverloaded,
    GatewayError,
    InternalError,
    InvalidModelOutput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
)


class Outcome(Enum):
    """What a replica's breaker is told when a request lets go of it."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class Action(Enum):
    """Where a request goes after a failure before its first event."""

    NEXT_REPLICA = "next replica"
    NEXT_DEPLOYMENT = "next deployment"
    TO_CLIENT = "to the client"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    breaker: Outcome


#: Errors that say the replica is misconfigured (its key, its model), not the client.
REPLICA_FAULTS = (AuthenticationFailed, PermissionDenied, ModelNotFound)
#: Errors that say the replica is busy, not broken.
BUSY = (RateLimited, EngineOverloaded)

_TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Verdict], ...] = (
    (ContextLengthExceeded, Verdict(Action.NEXT_DEPLOYMENT, Outcome.NEUTRAL)),
    (InvalidModelOutput, Verdict(Action.TO_CLIENT, Outcome.NEUTRAL)),
    (BUSY, Verdict(Action.NEXT_REPLICA, Outcome.NEUTRAL)),
    (REPLICA_FAULTS, Verdict(Action.NEXT_REPLICA, Outcome.FAILURE)),
)
_DOWN = Verdict(Action.NEXT_REPLICA, Outcome.FAILURE)
_CLIENT = Verdict(Action.TO_CLIENT, Outcome.NEUTRAL)


def before_first_event(exc: BaseException) -> Verdict:
    """What a failure before the request's first event means."""
    for kinds, verdict in _TABLE:
        if isinstance(exc, kinds):
            return verdict
    if isinstance(exc, GatewayError):
        return _DOWN if exc.retryable else _CLIENT
    if isinstance(exc, Exception):
        return _DOWN
    return _CLIENT


def after_first_event(exc: BaseException) -> Outcome:
    """What a failure once events have gone out means for the replica's breaker."""
    if isinstance(exc, GatewayError):
        broken = exc.status_code >= 500 and not isinstance(exc, InvalidModelOutput)
        return Outcome.FAILURE if broken else Outcome.NEUTRAL
    return Outcome.FAILURE if isinstance(exc, Exception) else Outcome.NEUTRAL


def as_gateway_error(exc: Exception) -> GatewayError:
    """The error a failed try stands for when no later try answers: an engine's own error as
    it is, a bug in an engine as an internal error (naming only its type)."""
    if isinstance(exc, GatewayError):
        return exc
    return InternalError(f"The engine failed ({type(exc).__name__}).")
