"""Table definitions. Metadata only: no prompt or completion text is stored here, except the
encrypted content of review items that a safety policy holds for a human (``reviews``) and
the Responses API's stored responses when the operator turns them on (``responses``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))  # shown to identify the key, not a secret
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256, hex
    role: Mapped[str] = mapped_column(String(16), default="inference")  # or "admin"
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: all
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    default_max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)  # content-safety tier
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRow(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_ts", "ts"), Index("ix_usage_principal", "principal"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(128))
    principal: Mapped[str] = mapped_column(String(300))  # "key:<id>", "jwt:<sub>", "anonymous"
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(200), nullable=True)
    arm: Mapped[str | None] = mapped_column(String(200), nullable=True)  # of a split
    path: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column()
    ttft_ms: Mapped[float | None] = mapped_column(nullable=True)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    cache: Mapped[str | None] = mapped_column(String(8), nullable=True)  # "hit": from the cache


class AuditRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_ts", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(64))  # key.create, key.revoke, auth.failure, ...
    actor: Mapped[str] = mapped_column(String(300))
    target: Mapped[str | None] = mapped_column(String(300), nullable=True)
    client: Mapped[str | None] = mapped_column(String(100), nullable=True)
    details: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)


class ReviewRow(Base):
    """An item of the human review queue. The prompt and answer are AES-GCM ciphertext (the
    review id as associated data), present only when the policy keeps content."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_status_created", "status", "created_at"),
        Index("ix_reviews_key_id", "key_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # rev_<hex>, public
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # pending, approved, rejected
    mode: Mapped[str] = mapped_column(String(24))  # hold, deliver_and_review
    direction: Mapped[str] = mapped_column(String(8))  # input, output
    category: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(300))
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_id: Mapped[str] = mapped_column(String(128))
    prompt_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    answer_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(300), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)


class StoredResponseRow(Base):
    """A stored Responses API response (only with ``responses.store`` on): the response, its
    input items and the conversation before it, as JSON bytes kept exactly as they were."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # resp_<hex>, public
    principal: Mapped[str] = mapped_column(String(300))  # the caller that made it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[bytes] = mapped_column(LargeBinary)
