"""The pipeline: optional stages are absent by default, ordered by slot, and plug in as an
addition (a refusing input policy answers through the API like any gateway error)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from qwen_gateway.errors import ContentFiltered
from qwen_gateway.service.pipeline import SLOTS, STAGES, Generate, Slot, compose
from qwen_gateway.service.route import Route
from routing.helpers import scripted
from support.fixtures import open_in_process

REQUEST = ChatRequest("m", (ChatMessage("user", "hi"),))


def _route(calls: list[str]) -> Generate:
    async def route(
        request: GenerationRequest, record: RequestRecord, user: str | None
    ) -> AsyncGenerator[EngineEvent, None]:
        calls.append("route")
        yield TextDelta(0, "from the engine")
        yield ChoiceFinished(0, "stop")
        yield Usage(1, 1)

    return route


class Tagging:
    """Notes when it runs, then passes the request on."""

    def __init__(self, slot: Slot, calls: list[str]) -> None:
        self.slot = slot
        self._calls = calls

    def wrap(self, inner: Generate) -> Generate:
        async def run(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            self._calls.append(self.slot)
            async for event in inner(request, record, user):
                yield event

        return run


class Cache:
    """Answers every request itself: the route is never reached."""

    slot: Slot = "cache"

    def wrap(self, inner: Generate) -> Generate:
        async def run(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            yield TextDelta(0, "from the cache")
            yield Usage(0, 0)

        return run


class Upper:
    """An output policy: changes the text coming back."""

    slot: Slot = "output_policy"

    def wrap(self, inner: Generate) -> Generate:
        async def run(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            async for event in inner(request, record, user):
                yield TextDelta(0, event.text.upper()) if isinstance(event, TextDelta) else event

        return run


class Refuse:
    """An input policy that refuses every request."""

    slot: Slot = "input_policy"

    def wrap(self, inner: Generate) -> Generate:
        async def run(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            raise ContentFiltered("The request was refused by the input policy.")
            yield  # pragma: no cover

        return run


async def _events(chain: Generate) -> list[Any]:
    return [e async for e in chain(REQUEST, RequestRecord("r"), None)]


def test_the_stages_are_listed_once_in_request_order() -> None:
    assert STAGES.index("authenticate") < STAGES.index("admit") < STAGES.index("normalise")
    assert STAGES.index("input_policy") < STAGES.index("cache_lookup") < STAGES.index("route")
    assert STAGES.index("engine") < STAGES.index("output_policy") < STAGES.index("cache_store")
    assert STAGES[-1] == "account"
    assert SLOTS == ("input_policy", "cache", "output_policy")


def test_without_optional_stages_the_chain_is_the_route_itself() -> None:
    route = _route([])
    assert compose(route) is route
    assert compose(route, []) is route


async def test_optional_stages_run_in_slot_order_whatever_order_they_are_given() -> None:
    calls: list[str] = []
    stages = [Tagging(s, calls) for s in ("output_policy", "input_policy", "cache")]
    events = await _events(compose(_route(calls), stages))
    assert calls == ["input_policy", "cache", "output_policy", "route"]
    assert TextDelta(0, "from the engine") in events


async def test_a_cache_stage_answers_without_routing_and_the_output_policy_sees_engine_events() -> (
    None
):
    calls: list[str] = []
    assert await _events(compose(_route(calls), [Cache(), Upper()])) == [
        TextDelta(0, "from the cache"),
        Usage(0, 0),
    ]
    assert calls == []
    events = await _events(compose(_route(calls), [Upper()]))
    assert events[0] == TextDelta(0, "FROM THE ENGINE")
    assert calls == ["route"]


async def test_a_stage_is_added_without_editing_the_tree(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    plain = Container(settings, engines={"m": scripted("m")})
    assert isinstance(plain.services.pipeline.generate, Route)  # nothing in between
    container = Container(settings, engines={"m": scripted("m")}, stages=[Refuse()])
    async with open_in_process(container) as g:
        r = await g.http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The request was refused by the input policy."
