"""The Responses edge's service: events from any engine (relayed upstream chunks too) become
the Responses events, and stored responses follow the retention period of its clock."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from qwen_gateway.config import load_settings
from qwen_gateway.container import build_router
from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    RelayedChunk,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.errors import NotFound
from qwen_gateway.policy.principal import Principal
from qwen_gateway.service.normalise import Normalise
from qwen_gateway.service.responses import ResponsesService
from qwen_gateway.store.db import Database
from qwen_gateway.store.responses import ResponseRepository
from routing.helpers import scripted
from support.spec import validate

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def relayed(*events: TextDelta | ToolCallDelta | ChoiceFinished) -> RelayedChunk:
    return RelayedChunk(b"{}", events)


async def upstream(
    request: GenerationRequest, record: RequestRecord, user: str | None
) -> AsyncGenerator[EngineEvent, None]:
    """A fake of the pipeline: what a relaying upstream engine sends for a streamed request."""
    record.deployment = "m"
    yield relayed(TextDelta(0, "Hel"))
    yield relayed(TextDelta(0, "lo"), ToolCallDelta(0, 0, "call_1", "f", '{"a": 1}'))
    yield relayed(ChoiceFinished(0, "tool_calls"))
    yield Usage(5, 3)


@pytest_asyncio.fixture
async def repo(tmp_path: Path) -> AsyncIterator[ResponseRepository]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    await db.migrate()
    try:
        yield ResponseRepository(db)
    finally:
        await db.aclose()


def service(tmp_path: Path, repo: ResponseRepository | None, clock: Clock) -> ResponsesService:
    settings = load_settings({"data_dir": str(tmp_path), "deployments": [{"name": "m"}]}, env={})
    router = build_router(settings, {"m": scripted("m", context_window=4096)})
    limits = RequestLimits()
    return ResponsesService(Normalise(router, limits), limits, upstream, repo, 1, clock)


def record() -> RequestRecord:
    r = RequestRecord("req_1")
    r.principal = Principal("key:1")
    return r


async def test_relayed_upstream_chunks_become_responses_events(
    tmp_path: Path, repo: ResponseRepository
) -> None:
    svc = service(tmp_path, repo, Clock())
    stream: Any = await svc.create({"model": "m", "input": "hi", "stream": True}, record())
    async with aclosing(stream):
        events = [event async for event in stream]
    for event in events:
        validate("ResponseStreamEvent", event)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Hel", "lo"]
    assert events[-1]["type"] == "response.completed"
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"a": 1}'
    assert final["usage"]["total_tokens"] == 8 and final["model"] == "m"
    whole: Any = await svc.create({"model": "m", "input": "hi"}, record())
    validate("Response", whole)
    assert [i["type"] for i in whole["output"]] == ["message", "function_call"]
    assert whole["output"][0]["content"][0]["text"] == "Hello"


async def test_stored_responses_expire_with_the_retention_period(
    tmp_path: Path, repo: ResponseRepository
) -> None:
    clock = Clock()
    svc = service(tmp_path, repo, clock)
    made: Any = await svc.create({"model": "m", "input": "hi"}, record())
    assert (await svc.retrieve(made["id"], record()))["id"] == made["id"]
    clock.now += 2 * DAY  # retention: one day
    with pytest.raises(NotFound):
        await svc.retrieve(made["id"], record())
    assert await svc.purge() == 1
    clock.now -= 2 * DAY
    with pytest.raises(NotFound):  # deleted, not only hidden
        await svc.retrieve(made["id"], record())
