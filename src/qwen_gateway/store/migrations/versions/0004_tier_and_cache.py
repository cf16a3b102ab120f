"""API keys get a tier (content-safety policies apply per tier); usage records say whether the
answer came from the response cache.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("tier", sa.String(64), nullable=True))
    op.add_column("usage_records", sa.Column("cache", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("cache")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("tier")
