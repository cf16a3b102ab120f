"""Replicas of one deployment: which to try first, and which not at all.

Healthy replicas whose breaker lets requests through are tried first, ordered by the strategy:
``least_outstanding`` (fewest requests in flight, ties broken at random) or ``power_of_two``
(two picked at random, the less loaded first). With an affinity key (the request's ``user`` or
the caller), the order is the key's rendezvous-hash order instead, so one caller keeps hitting
one replica (and its prefix cache) while that replica is up. Replicas a health check found
down come last; replicas with an open breaker are never tried.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from qwen_gateway.engines.base import Engine
from qwen_gateway.routing.breaker import CircuitBreaker

Strategy = Literal["least_outstanding", "power_of_two"]


@dataclass(eq=False)
class Replica:
    name: str  # its base URL, or its index for in-process copies
    engine: Engine
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    healthy: bool = True
    outstanding: int = 0

    def weight_for(self, key: str) -> int:
        digest = hashlib.blake2b(f"{key}\x00{self.name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")


class Balancer:
    def __init__(
        self,
        replicas: Sequence[Replica],
        strategy: Strategy = "least_outstanding",
        rng: random.Random | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a deployment needs at least one replica")
        self.replicas = list(replicas)
        self.strategy = strategy
        self._rng = rng or random.Random()

    def order(self, affinity: str | None = None) -> list[Replica]:
        """The replicas to try, best first."""
        if len(self.replicas) == 1:
            only = self.replicas[0]
            return [only] if only.breaker.available() else []
        usable = [r for r in self.replicas if r.breaker.available()]
        up = [r for r in usable if r.healthy]
        down = [r for r in usable if not r.healthy]
        if affinity:
            up.sort(key=lambda r: r.weight_for(affinity), reverse=True)
        elif self.strategy == "power_of_two" and len(up) > 2:
            a, b = self._rng.sample(up, 2)
            first = a if a.outstanding <= b.outstanding else b
            rest = sorted((r for r in up if r is not first), key=lambda r: r.outstanding)
            up = [first, *rest]
        else:
            self._rng.shuffle(up)  # ties go to a random replica, not always the first
            up.sort(key=lambda r: r.outstanding)
        return up + down
