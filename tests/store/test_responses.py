"""Stored Responses API responses on SQLite and PostgreSQL: kept exactly, scoped to the
caller, invisible once expired and deleted by the purge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio

from qwen_gateway.core.responses import StoredResponse
from qwen_gateway.store.db import Database
from qwen_gateway.store.responses import ResponseRepository

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
#: text a sanitiser would mangle: it must come back exactly as it went in
TEXT = 'line one\nline two\t\x00 \u202e 你好 "quoted"'


def stored(ident: str, principal: str = "key:1", days: int = 30) -> StoredResponse:
    response: Any = {"id": ident, "object": "response", "status": "completed", "output": [
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}]},
    ]}  # fmt: skip
    item: Any = {"id": "msg_0", "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": TEXT}]}  # fmt: skip
    return StoredResponse(
        id=ident,
        principal=principal,
        response=response,
        input_items=[item],
        conversation=[item, response["output"][0]],
        created_at=NOW,
        expires_at=NOW + timedelta(days=days),
    )


@pytest_asyncio.fixture
async def repo(database_url: str) -> AsyncIterator[ResponseRepository]:
    db = Database(database_url)
    await db.migrate()
    try:
        yield ResponseRepository(db)
    finally:
        await db.aclose()


async def test_a_response_comes_back_exactly_and_only_to_its_caller(
    repo: ResponseRepository,
) -> None:
    original = stored("resp_a")
    await repo.add(original)
    got = await repo.get("key:1", "resp_a", NOW)
    assert got == original
    assert got.response["output"][0]["content"][0]["text"] == TEXT  # type: ignore[typeddict-item]
    assert await repo.get("key:2", "resp_a", NOW) is None
    assert await repo.get("key:1", "resp_missing", NOW) is None
    assert not await repo.delete("key:2", "resp_a", NOW)
    assert await repo.get("key:1", "resp_a", NOW) is not None
    assert await repo.delete("key:1", "resp_a", NOW)
    assert await repo.get("key:1", "resp_a", NOW) is None
    assert not await repo.delete("key:1", "resp_a", NOW)


async def test_expired_responses_are_invisible_and_purged(repo: ResponseRepository) -> None:
    await repo.add(stored("resp_short", days=1))
    await repo.add(stored("resp_long", days=30))
    later = NOW + timedelta(days=2)
    assert await repo.get("key:1", "resp_short", NOW) is not None
    assert await repo.get("key:1", "resp_short", later) is None  # expired: gone at once
    assert not await repo.delete("key:1", "resp_short", later)  # nor can it be deleted
    assert await repo.get("key:1", "resp_long", later) is not None
    assert await repo.purge(later) == 1
    assert await repo.get("key:1", "resp_short", NOW) is None  # deleted, not only hidden
    assert await repo.get("key:1", "resp_long", later) is not None
    assert await repo.purge(later) == 0
