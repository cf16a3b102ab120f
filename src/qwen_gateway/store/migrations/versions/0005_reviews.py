"""The human review queue: items held or flagged by a content-safety policy, their content
encrypted.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(24), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(300), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("deployment", sa.String(200), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("prompt_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("answer_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewer", sa.String(300), nullable=True),
        sa.Column("reason", sa.String(1000), nullable=True),
    )
    op.create_index("ix_reviews_status_created", "reviews", ["status", "created_at"])
    op.create_index("ix_reviews_key_id", "reviews", ["key_id"])


def downgrade() -> None:
    op.drop_table("reviews")
