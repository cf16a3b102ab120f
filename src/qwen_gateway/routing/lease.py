"""A request's hold on one replica: the only place outstanding counts and breaker verdicts
change.

:func:`lease` asks the replica's breaker to let the request through; the lease it gives is
used as ``async with held:``. While held, the request counts in the outstanding requests of
the replica and of its deployment. When let go, the breaker is told the outcome: a success
when the request ran to its end after its first event, otherwise what the error that ended it
means (:mod:`qwen_gateway.routing.failure`) before or after the first event. The request's
first event (:meth:`ReplicaLease.answered`) settles a half-open probe at once.
"""

from __future__ import annotations

from types import TracebackType

from qwen_gateway.routing.balancer import Replica
from qwen_gateway.routing.breaker import Ticket
from qwen_gateway.routing.failure import Outcome, after_first_event, before_first_event
from qwen_gateway.routing.registry import Deployment

#: A request let through after its probe (if it was one) was settled.
_SETTLED = Ticket(probe=False)


class ReplicaLease:
    def __init__(self, deployment: Deployment, replica: Replica, ticket: Ticket) -> None:
        self.deployment = deployment
        self.replica = replica
        self._ticket = ticket
        self._held = False
        #: Whether the request's first event came from this replica.
        self.first_event = False
        #: What the breaker was told (None while held).
        self.outcome: Outcome | None = None

    async def __aenter__(self) -> ReplicaLease:
        if self._held or self.outcome is not None:
            raise RuntimeError("a replica lease is held once")
        self._held = True
        self.replica.outstanding += 1
        self.deployment.outstanding += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False
        self.replica.outstanding -= 1
        self.deployment.outstanding -= 1
        self._settle(self._outcome(exc))

    def answered(self) -> None:
        """The replica gave the request's first event: a half-open probe closes the breaker
        now; the rest of the stream decides the request's own outcome."""
        self.replica.breaker.answered(self._ticket)
        self._ticket = _SETTLED
        self.first_event = True

    def _outcome(self, exc: BaseException | None) -> Outcome:
        if exc is None:
            return Outcome.SUCCESS if self.first_event else Outcome.NEUTRAL
        if self.first_event:
            return after_first_event(exc)
        return before_first_event(exc).breaker

    def _settle(self, outcome: Outcome) -> None:
        breaker = self.replica.breaker
        if outcome is Outcome.SUCCESS:
            breaker.success(self._ticket)
        elif outcome is Outcome.FAILURE:
            breaker.failure(self._ticket)
        else:
            breaker.release(self._ticket)
        self.outcome = outcome


def lease(deployment: Deployment, replica: Replica) -> ReplicaLease | None:
    """A lease on ``replica`` of ``deployment``, or None when its breaker refuses the request
    (open, or half-open with its probe already out)."""
    ticket = replica.breaker.acquire()
    if ticket is None:
        return None
    return ReplicaLease(deployment, replica, ticket)
