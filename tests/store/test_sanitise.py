"""Every string the store writes is made storable and harmless: NUL, control, C1 and bidi
characters escaped, lone surrogates escaped, values cut to their column; on SQLite and
PostgreSQL (which refuses NUL in text)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_text
from qwen_gateway.store.usage import UsageRepository
from store.helpers import usage


def test_unsafe_characters_are_escaped_as_visible_text() -> None:
    assert clean_text("bob\x00\x1b[2J\x85\u202etxt.exe\ud800 é 中") == (
        "bob\\x00\\x1b[2J\\x85\\u202etxt.exe\\ud800 é 中"
    )
    assert clean_text("a\x00" * 200, 11) == "a\\x00a\\x00a"


async def test_usage_and_audit_with_nul_and_control_characters_are_stored_sanitised(
    database_url: str,
) -> None:
    rid = f"s-{uuid.uuid4().hex[:8]}\x00"
    db = Database(database_url)
    await db.migrate()
    try:
        repo, audit = UsageRepository(db), AuditRepository(db)
        await repo.add_many([
            usage(rid, principal="jwt:bob\x00\x1b[31m", path="/v1/x\x00y\u202e",
                  model="m\ud800" + "x" * 300, arm="a\x07"),
        ])  # fmt: skip
        clean_id = rid.replace("\x00", "\\x00")
        assert clean_id in await repo.request_ids()
        rows = await repo.report(["key", "model", "arm"])
        row = next(r for r in rows if r["key"] == "jwt:bob\\x00\\x1b[31m")
        assert row["model"] == ("m\\ud800" + "x" * 300)[:200] and row["arm"] == "a\\x07"
        await audit.add_many([
            AuditEntry(datetime.now(UTC), "auth.failure", "jwt:eve\x00", "key:1", "1.2.3.4\n",
                       {"reason\x00": "bad\x00", "list": ["\x1b", 1]}),
        ])  # fmt: skip
        event = (await audit.recent(1))[0]
        assert (event["actor"], event["client"]) == ("jwt:eve\\x00", "1.2.3.4\\x0a")
        assert event["details"] == {"reason\\x00": "bad\\x00", "list": ["\\x1b", 1]}
    finally:
        await db.aclose()
