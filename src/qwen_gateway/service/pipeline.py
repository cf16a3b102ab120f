"""The request pipeline: the named stages every generation request passes, listed here once.

::

    authenticate → admit (limits) → normalise → [input policy] → [cache lookup] → route
        → engine → [output policy] → [cache store] → account

==================  ========================  =================================================
stage               class                     runs
==================  ========================  =================================================
authenticate        ``Authenticate``          at the edge, before the body is read
admit               ``Admit``                 inside route: for each deployment the router tries
                                              (the deployment that serves is the one charged)
normalise           ``Normalise``             wire body → core request, default output tokens
[input policy]      a :class:`Stage`          optional, slot ``input_policy``
[cache lookup]      a :class:`Stage`          optional, slot ``cache`` (lookup on the way in,
[cache store]                                 store on the way out: one stage wraps both)
route, engine       ``Route``                 the router's plan, failover, the engine's events
[output policy]     a :class:`Stage`          optional, slot ``output_policy``
account             ``Accounting``            when the request has ended: usage, limits settled
==================  ========================  =================================================

The bracketed stages are absent by default and cost nothing then: :func:`compose` builds the
chain once, at start, from the stages configured, so a request calls only those. A new stage
(content safety, a response cache) is a class with a ``slot`` and a ``wrap`` method, added to
the list the container passes here; a new API edge (Responses, Messages) is a normaliser and a
renderer around :attr:`Pipeline.generate`. The embeddings edge (``service/embeddings.py``)
produces no tokens, so it skips the cache and the output policy: it calls the input policy's
check and the route stage (admission included) directly, and is accounted like the others.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EngineEvent, GenerationRequest
from qwen_gateway.service.account import Accounting
from qwen_gateway.service.authenticate import Authenticate
from qwen_gateway.service.normalise import Normalise

#: Every stage, in the order a request passes them.
STAGES: tuple[str, ...] = (
    "authenticate",
    "admit",
    "normalise",
    "input_policy",
    "cache_lookup",
    "route",
    "engine",
    "output_policy",
    "cache_store",
    "account",
)

Slot = Literal["input_policy", "cache", "output_policy"]
#: Where an optional stage sits, outermost first: the input policy sees a request before the
#: cache does; the cache stores what the output policy let through.
SLOTS: tuple[Slot, ...] = ("input_policy", "cache", "output_policy")

#: From a core request to its event stream: started at the first ``anext``, closed to abort.
#: ``user`` is the client's end-user id (the ``user`` field), for sticky routing.
Generate = Callable[
    [GenerationRequest, RequestRecord, str | None], AsyncGenerator[EngineEvent, None]
]


class Stage(Protocol):
    """An optional stage. ``wrap`` is called once, when the pipeline is built, with the rest
    of the chain; the function it returns runs for every request: it may refuse the request
    (raise a :class:`~qwen_gateway.errors.GatewayError`), answer it itself (a cache hit), or
    pass it on and look at, change or stop the events coming back."""

    @property
    def slot(self) -> Slot: ...

    def wrap(self, inner: Generate) -> Generate: ...


def compose(route: Generate, stages: Iterable[Stage] = ()) -> Generate:
    """The chain from the first optional stage to ``route``; ``route`` itself without any."""
    ordered = sorted(stages, key=lambda s: SLOTS.index(s.slot))
    chain = route
    for stage in reversed(ordered):
        chain = stage.wrap(chain)
    return chain


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The stages, built once. Edges call them in order: :attr:`authenticate`, then their
    normaliser (:attr:`normalise`), then :attr:`generate`; :attr:`account` runs when the
    request has ended (the edge's middleware calls it, with the final status)."""

    authenticate: Authenticate
    normalise: Normalise
    generate: Generate
    account: Accounting
    stages: tuple[Stage, ...] = field(default=())
