"""The review queue on SQLite and PostgreSQL: a held answer released to its key once approved
and never to another, rejection, retention, encryption at rest, audit of decisions, metrics."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from qwen_gateway.config import load_settings
from qwen_gateway.container import Store, build_store, open_store
from qwen_gateway.errors import InvalidRequest, NotFound
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.safety.crypto import ContentCipher, UndecryptableContent, generate_key
from qwen_gateway.service.admin import Actor
from qwen_gateway.service.reviews import ReviewObserver, ReviewService
from qwen_gateway.store.reviews import ReviewRepository

KEY = generate_key()
REVIEWER = Actor("key:1", "10.0.0.7")
PROMPT = "Should I put my savings into 比特币 options?"
ANSWER = "Put everything into leveraged options: 保证翻倍 guaranteed-double-7f3a."


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def opened(tmp_path: Path, database_url: str) -> AsyncIterator[Store]:
    settings = load_settings(
        {
            "data_dir": str(tmp_path),
            "database": {"url": database_url},
            "safety": {"review": {"encryption_key": KEY}},
        },
        env={},
    )
    store = build_store(settings, review_key="existing")
    async with AsyncExitStack() as stack:
        await open_store(store, stack)
        yield store


def service(
    store: Store,
    clock: Clock | None = None,
    key: str = KEY,
    observer: ReviewObserver | None = None,
    store_content: bool = True,
    retention_days: int = 30,
) -> ReviewService:
    return ReviewService(
        ReviewRepository(store.db),
        ContentCipher(key),
        store_content=store_content,
        retention_days=retention_days,
        notice="held: {review_id}",
        record=store.writer.put,
        flush=store.writer.flush,
        observer=observer,
        clock=clock or Clock(),
    )


def principal() -> tuple[str, int]:
    """A key of its own for each test (the PostgreSQL database is shared by the session)."""
    key_id = secrets.randbelow(10**9) + 1000
    return f"key:{key_id}", key_id


async def submit(
    reviews: ReviewService, who: tuple[str, int], category: str = "finance", **kw: Any
) -> str:
    args: dict[str, Any] = {
        "mode": "hold",
        "direction": "output",
        "category": category,
        "principal_id": who[0],
        "key_id": who[1],
        "deployment": "qwen",
        "request_id": "req_1",
        "prompt": PROMPT,
        "answer": ANSWER,
    }
    return await reviews.submit(**{**args, **kw})


async def test_a_held_answer_is_released_to_its_key_once_approved(
    tmp_path: Path, database_url: str
) -> None:
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store), principal()
        review_id = await submit(reviews, me)
        assert review_id.startswith("rev_") and len(review_id) == 28
        assert reviews.notice(review_id) == f"held: {review_id}"
        pending = await reviews.fetch_for(review_id, me[0])
        assert (pending.status, pending.content, pending.category) == ("pending", None, "finance")
        assert pending.view()["message"] is None
        decided = await reviews.decide(review_id, True, REVIEWER, "checked")
        assert (decided.record.status, decided.record.reviewer) == ("approved", "key:1")
        released = await reviews.fetch_for(review_id, me[0])
        assert (released.status, released.content) == ("approved", ANSWER)
        assert released.view() == {
            "id": review_id,
            "object": "review",
            "status": "approved",
            "category": "finance",
            "created": pending.created,
            "message": {"role": "assistant", "content": ANSWER},
        }


async def test_another_key_is_told_the_review_does_not_exist(
    tmp_path: Path, database_url: str
) -> None:
    async with opened(tmp_path, database_url) as store:
        reviews = service(store)
        review_id = await submit(reviews, principal())
        await reviews.decide(review_id, True, REVIEWER)
        with pytest.raises(NotFound) as other:
            await reviews.fetch_for(review_id, principal()[0])
        with pytest.raises(NotFound) as missing:
            await reviews.fetch_for("rev_" + "0" * 24, principal()[0])
        # the same answer whether the item exists or not
        assert other.value.message.replace(review_id, "X") == missing.value.message.replace(
            "rev_" + "0" * 24, "X"
        )


async def test_a_rejected_answer_is_never_released_and_a_decision_is_final(
    tmp_path: Path, database_url: str
) -> None:
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store), principal()
        review_id = await submit(reviews, me)
        await reviews.decide(review_id, False, REVIEWER, "misleading")
        result = await reviews.fetch_for(review_id, me[0])
        assert (result.status, result.content, result.view()["message"]) == (
            "rejected",
            None,
            None,
        )
        with pytest.raises(InvalidRequest) as again:
            await reviews.decide(review_id, True, REVIEWER)
        assert again.value.code == "review_already_decided"
        assert (await reviews.fetch_for(review_id, me[0])).status == "rejected"
        with pytest.raises(NotFound):
            await reviews.decide("rev_missing", True, REVIEWER)


async def test_decisions_are_audited_with_reviewer_and_time_but_no_content(
    tmp_path: Path, database_url: str
) -> None:
    clock = Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store, clock), principal()
        approved, rejected = await submit(reviews, me), await submit(reviews, me)
        clock.now += timedelta(minutes=5)
        await reviews.decide(approved, True, REVIEWER, "fine")
        await reviews.decide(rejected, False, Actor("cli:alice"), ANSWER)
        await reviews.show(approved, REVIEWER)
        events = [
            e
            for e in await store.admin.audit(1000)
            if e["target"] in (approved, rejected) and e["action"].startswith("review.")
        ]
        by_action = {e["action"]: e for e in events}
        assert set(by_action) == {"review.approve", "review.reject", "review.show"}
        approve = by_action["review.approve"]
        assert (approve["actor"], approve["client"], approve["target"]) == (
            "key:1",
            "10.0.0.7",
            approved,
        )
        assert datetime.fromisoformat(approve["ts"]).replace(tzinfo=UTC) == clock.now
        assert approve["details"] == {
            "category": "finance",
            "mode": "hold",
            "direction": "output",
            "key_id": me[1],
            "reason_given": True,
        }
        assert by_action["review.reject"]["actor"] == "cli:alice"
        for event in events:
            assert ANSWER not in repr(event) and PROMPT not in repr(event)


async def test_items_past_retention_are_purged(tmp_path: Path, database_url: str) -> None:
    clock = Clock(datetime.now(UTC) - timedelta(days=40))
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store, clock, retention_days=30), principal()
        old = await submit(reviews, me)
        clock.now += timedelta(days=39)  # one day ago
        recent = await submit(reviews, me)
        clock.now += timedelta(days=1)
        assert await reviews.purge() >= 1
        with pytest.raises(NotFound):
            await reviews.fetch_for(old, me[0])
        assert (await reviews.fetch_for(recent, me[0])).status == "pending"
        clock.now += timedelta(days=28, hours=23)  # `recent` is 29 days 23 hours old
        await reviews.purge()
        assert (await reviews.fetch_for(recent, me[0])).status == "pending"
        assert await reviews.purge(clock.now + timedelta(hours=2)) >= 1
        with pytest.raises(NotFound):
            await reviews.fetch_for(recent, me[0])


async def test_content_is_encrypted_at_rest(tmp_path: Path, database_url: str) -> None:
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store), principal()
        review_id = await submit(reviews, me, category="finance_at_rest_marker")
        async with store.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT prompt_ciphertext, answer_ciphertext, category FROM reviews "
                        "WHERE id = :id"
                    ),
                    {"id": review_id},
                )
            ).one()
        prompt_blob, answer_blob, category = bytes(row[0]), bytes(row[1]), row[2]
        assert category == "finance_at_rest_marker"
        for blob in (prompt_blob, answer_blob):
            assert len(blob) > 28
            for secret in (PROMPT, ANSWER, "guaranteed-double-7f3a", "保证翻倍"):
                assert secret.encode() not in blob
        shown = await reviews.show(review_id)
        assert (shown.prompt, shown.answer) == (PROMPT, ANSWER)
        if store.db.is_sqlite:
            path = Path(database_url.split(":///", 1)[1])
            files = path.parent.glob(path.name + "*")  # the database, its -wal and -shm
            on_disk = b"".join(f.read_bytes() for f in files)
            assert b"finance_at_rest_marker" in on_disk  # the metadata is there: the check bites
            for secret in (PROMPT, ANSWER, "guaranteed-double-7f3a", "保证翻倍"):
                assert secret.encode() not in on_disk


async def test_content_under_another_key_is_a_clear_error(
    tmp_path: Path, database_url: str
) -> None:
    async with opened(tmp_path, database_url) as store:
        me = principal()
        review_id = await submit(service(store), me)
        rotated = service(store, key=generate_key())
        with pytest.raises(UndecryptableContent) as caught:
            await rotated.show(review_id)
        assert "encryption_key" in caught.value.message and caught.value.status_code == 500
        await rotated.decide(review_id, True, REVIEWER)
        with pytest.raises(UndecryptableContent) as client_side:
            await rotated.fetch_for(review_id, me[0])
        assert "encryption_key" not in client_side.value.message  # the client is not told why


async def test_without_store_content_only_metadata_is_kept(
    tmp_path: Path, database_url: str
) -> None:
    async with opened(tmp_path, database_url) as store:
        reviews, me = service(store, store_content=False), principal()
        review_id = await submit(reviews, me)
        shown = await reviews.show(review_id)
        assert (shown.prompt, shown.answer, shown.view()["has_content"]) == (None, None, False)
        await reviews.decide(review_id, True, REVIEWER)
        assert (await reviews.fetch_for(review_id, me[0])).content is None


async def test_the_queue_lists_by_status_category_and_key(
    tmp_path: Path, database_url: str
) -> None:
    clock = Clock()
    async with opened(tmp_path, database_url) as store:
        reviews, me, other = service(store, clock), principal(), principal()
        first = await submit(reviews, me, category="medical")
        clock.now += timedelta(seconds=1)
        second = await submit(reviews, me, category="finance", mode="deliver_and_review")
        clock.now += timedelta(seconds=1)
        await submit(reviews, other, category="medical")
        await reviews.decide(second, False, REVIEWER)
        mine = await reviews.list(key_id=me[1])
        assert [i.record.id for i in mine] == [first, second]  # oldest first
        assert all("prompt" not in i.view() and "answer" not in i.view() for i in mine)
        assert [i.record.id for i in await reviews.list("pending", key_id=me[1])] == [first]
        medical = await reviews.list(category="medical", key_id=me[1])
        assert [i.record.id for i in medical] == [first]
        assert [i.record.id for i in await reviews.list(key_id=me[1], limit=1)] == [first]
        with pytest.raises(InvalidRequest) as bad:
            await reviews.list("held")
        assert bad.value.param == "status"
        with pytest.raises(InvalidRequest):
            await reviews.list(limit=0)


async def test_metrics_follow_submissions_decisions_and_the_queue(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    clock = Clock(datetime.now(UTC) - timedelta(seconds=120))
    metrics = Metrics()
    scraped_at = (clock.now + timedelta(seconds=120)).timestamp()
    observer = metrics.reviews(clock=lambda: scraped_at)
    async with opened(tmp_path, database_url) as store:
        reviews = service(store, clock, observer=observer)
        first = await submit(reviews, principal())
        clock.now += timedelta(seconds=60)
        await submit(reviews, principal(), category="medical", mode="deliver_and_review")
        text_ = metrics.render().decode()
        assert "qwen_gateway_review_queue_depth 2.0" in text_
        assert "qwen_gateway_review_oldest_pending_seconds 120.0" in text_
        assert 'qwen_gateway_review_submitted_total{category="finance",mode="hold"} 1.0' in text_
        await reviews.decide(first, True, REVIEWER)
        text_ = metrics.render().decode()
        assert "qwen_gateway_review_queue_depth 1.0" in text_
        assert "qwen_gateway_review_oldest_pending_seconds 60.0" in text_
        assert 'qwen_gateway_review_decisions_total{decision="approved"} 1.0' in text_
