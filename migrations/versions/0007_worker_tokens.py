"""worker tokens and the worker transport

`worker_tokens` (one row per `unipic worker-tokens create`: name, sha256 of the `wk_...` token, allowed kinds,
max pixels, revocation time) authenticate the HTTPS worker gateway (`/v1/worker/...`); `workers.transport.base` says
how a worker reaches the deployment: "direct" (database, broker and bucket) or "remote" (the gateway).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "worker_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kinds", JSON_TYPE, nullable=False),
        sa.Column("max_pixels", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_worker_tokens_token_hash")),
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("transport", sa.String(length=20), server_default=sa.text("'direct'"),
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("transport")
    op.drop_table("worker_tokens")
