"""Health checks of replicas.

An engine is asked whether it is up through :func:`engine_up` alone (and whether it is down
for good through :func:`engine_down`). A check that fails with
an error or runs past its time is logged and counted as a failure by the replica's breaker (an
engine whose health check crashes is as broken as one whose requests do); an engine that simply
says it is down is marked down, which the balancer uses to try it last.
"""

from __future__ import annotations

import asyncio
import logging

from qwen_gateway.engines.base import Engine
from qwen_gateway.routing.balancer import Replica
from qwen_gateway.routing.breaker import Ticket

log = logging.getLogger(__name__)


async def engine_up(engine: Engine) -> bool:
    """Whether ``engine`` says it takes requests: the one place an engine is asked."""
    return (await engine.health()).ready


async def engine_down(engine: Engine) -> bool:
    """Whether ``engine``'s scheduler is down (restarting, or down for good): /health fails."""
    return (await engine.health()).down


async def probe(deployment: str, replica: Replica, seconds: float) -> bool:
    """Whether ``replica`` of ``deployment`` is up, asked with a time limit of ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await engine_up(replica.engine)
    except TimeoutError:
        log.warning(
            "the health check of replica %s of %s gave no answer within %gs",
            replica.name,
            deployment,
            seconds,
        )
    except Exception as exc:
        log.error(
            "the health check of replica %s of %s failed", replica.name, deployment, exc_info=exc
        )
    replica.breaker.failure(Ticket(probe=False))
    return False
