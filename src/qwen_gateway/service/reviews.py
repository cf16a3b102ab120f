"""The human review queue: items a content-safety policy sends for review (``submit``, called
by the pipeline's policy stages), the client's fetch of a held answer (``fetch_for``), and the
reviewers' side (list, show, approve, reject: the admin API and the CLI), with retention.

Content (prompt, answer) is kept only when the policy says so (``store_content``), and then
only encrypted (:class:`~qwen_gateway.safety.crypto.ContentCipher`, the review id as associated
data). Decisions go to the audit trail with the reviewer and the time, never the content."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, get_args

from qwen_gateway.errors import InvalidRequest, NotFound
from qwen_gateway.safety.crypto import ContentCipher, UndecryptableContent
from qwen_gateway.service.admin import Actor
from qwen_gateway.store.audit import AuditEntry
from qwen_gateway.store.reviews import Direction, Mode, ReviewRecord, ReviewRepository, Status

log = logging.getLogger(__name__)
STATUSES: tuple[str, ...] = get_args(Status)
MODES: tuple[str, ...] = get_args(Mode)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
MAX_LIST = 1000


class ReviewObserver(Protocol):
    """Where the queue's metrics go (``observability.metrics.ReviewMetrics``)."""

    def submitted(self, category: str, mode: str) -> None: ...

    def decided(self, decision: str) -> None: ...

    def queue(self, depth: int, oldest: datetime | None) -> None: ...


class _Quiet:
    def submitted(self, category: str, mode: str) -> None:
        return None

    def decided(self, decision: str) -> None:
        return None

    def queue(self, depth: int, oldest: datetime | None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ReviewResult:
    """What the client that made the request sees of its review item."""

    id: str
    status: Status
    category: str
    created: int  # unix seconds
    content: str | None  # the released answer (approved, content kept); otherwise None

    def view(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/reviews/{id}``."""
        message = (
            {"role": "assistant", "content": self.content} if self.content is not None else None
        )
        return {
            "id": self.id,
            "object": "review",
            "status": self.status,
            "category": self.category,
            "created": self.created,
            "message": message,
        }


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """What a reviewer sees: the item's metadata, and its decrypted content from ``show``."""

    record: ReviewRecord
    prompt: str | None = None
    answer: str | None = None

    def view(self, *, content: bool = False) -> dict[str, Any]:
        r = self.record
        out: dict[str, Any] = {
            "id": r.id,
            "object": "review",
            "status": r.status,
            "mode": r.mode,
            "direction": r.direction,
            "category": r.category,
            "principal": r.principal,
            "key_id": r.key_id,
            "deployment": r.deployment,
            "request_id": r.request_id,
            "created_at": r.created_at.isoformat(),
            "decided_at": r.decided_at.isoformat() if r.decided_at else None,
            "reviewer": r.reviewer,
            "reason": r.reason,
            "has_content": r.prompt_ciphertext is not None or r.answer_ciphertext is not None,
        }
        if content:
            out["prompt"] = self.prompt
            out["answer"] = self.answer
        return out


def new_review_id() -> str:
    return "rev_" + secrets.token_hex(12)


class ReviewService:
    def __init__(
        self,
        repository: ReviewRepository,
        cipher: ContentCipher | None,
        *,
        store_content: bool,
        retention_days: int,
        notice: str,
        record: Callable[[AuditEntry], None],
        flush: Callable[[], Any],
        observer: ReviewObserver | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``cipher`` may be None only with ``store_content`` off (nothing to encrypt, and
        content stored earlier cannot be shown). ``record`` queues an audit entry on the
        background writer, ``flush`` (awaited) writes what is queued."""
        if store_content and cipher is None:
            raise ValueError("storing review content needs a cipher")
        self._repo = repository
        self._cipher = cipher
        self._store_content = store_content
        self._retention = timedelta(days=retention_days)
        self._notice = notice
        self._record = record
        self._flush = flush
        self._observer: ReviewObserver = observer or _Quiet()
        self._clock = clock

    def notice(self, review_id: str) -> str:
        """The text a client gets in place of a held answer."""
        return self._notice.format(review_id=review_id)  # checked by the settings

    # ---- the pipeline's side -----------------------------------------------------------

    async def submit(
        self,
        *,
        mode: Mode,
        direction: Direction,
        category: str,
        principal_id: str,
        key_id: int | None,
        deployment: str | None,
        request_id: str,
        prompt: str | None,
        answer: str | None,
    ) -> str:
        """Queue an item for review; its id. The prompt and answer are stored (encrypted)
        when given and the configuration keeps content."""
        if mode not in MODES or direction not in DIRECTIONS:
            raise ValueError(f"unknown review mode {mode!r} or direction {direction!r}")
        review_id = new_review_id()
        cipher = self._cipher if self._store_content else None
        now = self._clock()
        await self._repo.add(
            ReviewRecord(
                id=review_id,
                created_at=now,
                status="pending",
                mode=mode,
                direction=direction,
                category=category,
                principal=principal_id,
                key_id=key_id,
                deployment=deployment,
                request_id=request_id,
                prompt_ciphertext=(
                    cipher.encrypt(prompt, review_id) if cipher and prompt is not None else None
                ),
                answer_ciphertext=(
                    cipher.encrypt(answer, review_id) if cipher and answer is not None else None
                ),
            )
        )
        self._observer.submitted(category, mode)
        await self.refresh()
        return review_id

    # ---- the client's side -------------------------------------------------------------

    async def fetch_for(self, review_id: str, principal_id: str) -> ReviewResult:
        """The item as its requester sees it; anyone else is told it does not exist."""
        record = await self._repo.get(review_id)
        if record is None or record.principal != principal_id:
            raise NotFound(f"No review '{review_id}'.", param="review_id")
        content = None
        if record.status == "approved" and record.answer_ciphertext is not None:
            try:
                content = self._decrypt(record.answer_ciphertext, record.id)
            except UndecryptableContent as exc:  # the operator's to fix: told in the log
                log.error("%s", exc.message)
                raise UndecryptableContent(
                    f"The answer of review '{review_id}' cannot be released at the moment."
                ) from None
        return ReviewResult(
            record.id, record.status, record.category, int(record.created_at.timestamp()), content
        )

    # ---- the reviewers' side -----------------------------------------------------------

    async def list(
        self,
        status: str | None = None,
        category: str | None = None,
        key_id: int | None = None,
        limit: int = 100,
    ) -> list[ReviewItem]:
        """Items (metadata only), oldest first."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                "status must be one of pending, approved, rejected.", param="status"
            )
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIST}.", param="limit")
        records = await self._repo.list(
            status=status,  # type: ignore[arg-type]  # checked above
            category=category,
            key_id=key_id,
            limit=limit,
        )
        return [ReviewItem(r) for r in records]

    async def show(self, review_id: str, actor: Actor | None = None) -> ReviewItem:
        """One item with its content decrypted; with ``actor``, the reading is audited
        (``review.show``: who read which item's content, when)."""
        record = await self._get(review_id)
        item = ReviewItem(
            record,
            prompt=self._decrypt(record.prompt_ciphertext, record.id),
            answer=self._decrypt(record.answer_ciphertext, record.id),
        )
        if actor is not None and (item.prompt is not None or item.answer is not None):
            details = {"category": record.category, "key_id": record.key_id}
            self._record(
                AuditEntry(self._clock(), "review.show", actor.id, review_id, actor.client, details)
            )
        return item

    async def decide(
        self, review_id: str, approve: bool, actor: Actor, reason: str | None = None
    ) -> ReviewItem:
        """Approve or reject a pending item; audited as ``review.approve`` / ``review.reject``
        (the reviewer, where from, when; never the content)."""
        status: Status = "approved" if approve else "rejected"
        when = self._clock()
        if not await self._repo.decide(review_id, status, actor.id, reason, when):
            record = await self._get(review_id)  # NotFound when it is not there
            raise InvalidRequest(
                f"Review '{review_id}' was already {record.status}.",
                param="review_id",
                code="review_already_decided",
            )
        record = await self._get(review_id)
        action = "review.approve" if approve else "review.reject"
        details = {
            "category": record.category,
            "mode": record.mode,
            "direction": record.direction,
            "key_id": record.key_id,
            "reason_given": reason is not None and reason != "",
        }
        self._record(AuditEntry(when, action, actor.id, review_id, actor.client, details))
        self._observer.decided(status)
        await self.refresh()
        return ReviewItem(record)

    # ---- retention and gauges ----------------------------------------------------------

    async def purge(self, now: datetime | None = None) -> int:
        """Delete the items older than the retention period; how many were deleted."""
        deleted = await self._repo.purge((now or self._clock()) - self._retention)
        if deleted:
            log.info("review queue: %d items past retention deleted", deleted)
            await self.refresh()
        return deleted

    async def refresh(self) -> None:
        """Read the queue's depth and oldest pending item from the database (shared by every
        replica) into the gauges."""
        depth, oldest = await self._repo.pending()
        self._observer.queue(depth, oldest)

    async def maintain_once(self) -> None:
        """One round of maintenance (purge, then the queue gauges), run periodically by the
        container; a failure is logged (the next round retries)."""
        try:
            await self.purge()
            await self.refresh()
        except Exception as exc:
            log.error("review queue maintenance failed (%s); retrying", type(exc).__name__)

    # ---- helpers -------------------------------------------------------------------------

    async def _get(self, review_id: str) -> ReviewRecord:
        record = await self._repo.get(review_id)
        if record is None:
            raise NotFound(f"No review '{review_id}'.", param="review_id")
        return record

    def _decrypt(self, blob: bytes | None, review_id: str) -> str | None:
        if blob is None:
            return None
        if self._cipher is None:
            raise UndecryptableContent(
                f"The content of {review_id} is stored encrypted, but "
                "safety.review.encryption_key is not set."
            )
        return self._cipher.decrypt(blob, review_id)
