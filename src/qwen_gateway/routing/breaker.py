"""A circuit breaker per replica: closed -> open after consecutive failures -> half-open after
a cooldown, where a single probe request decides whether it closes or opens again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class BreakerState(IntEnum):
    """Values as exported in ``qwen_gateway_replica_breaker_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def available(self) -> bool:
        """Whether a request could be let through now (without taking the probe)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def acquire(self) -> Ticket | None:
        """Let one request through (its ticket says whether it is the half-open probe), or
        refuse (None); in half-open state only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Ticket(probe=False)
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return Ticket(probe=True)
        return None

    def answered(self, ticket: Ticket) -> None:
        """The request's first event came: a probe closes the breaker. (Consecutive failures
        are reset only by :meth:`success`, when a request completes.)"""
        if ticket.probe:
            self._opened_at = None
            self._probing = False
            self._failures = 0

    def success(self, ticket: Ticket) -> None:
        """A request completed."""
        self.answered(ticket)
        if self._opened_at is None:
            self._failures = 0

    def failure(self, ticket: Ticket) -> None:
        if self._opened_at is not None:
            if ticket.probe:  # the probe failed: open again, for a whole new cooldown
                self._opened_at = self._clock()
                self._probing = False
            return  # a request let in before it opened: already counted as open
        self._failures += 1
        if self._failures >= self.threshold:
            self._opened_at = self._clock()

    def release(self, ticket: Ticket) -> None:
        """A request ended without a verdict (client gone, client error): a probe's slot is
        free again."""
        if ticket.probe:
            self._probing = False


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request let through by a breaker."""

    probe: bool
