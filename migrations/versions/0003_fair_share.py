"""fair-share scheduling: key weights, per (queue, key) virtual time, the claim's partial index

`api_keys.weight` (default 1.0), the `fair_share` table that `storage.scheduling.policy` reads and advances at claim time,
and `ix_jobs_queued_by_owner`, a partial index over queued jobs only (queue, owner, priority desc, age) so a claim
probes one key's best job without scanning the queue. Keys with jobs already queued get their rows at upgrade.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), server_default=sa.text("1.0"), nullable=False))
    op.create_table(
        "fair_share",
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("vtime", sa.Float(), nullable=False),
        sa.Column("served_jobs", sa.BigInteger(), nullable=False),
        sa.Column("served_work", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue", "owner_id", name=op.f("pk_fair_share")),
    )
    op.create_index(op.f("ix_fair_share_queue_vtime"), "fair_share", ["queue", "vtime"], unique=False)
    # keys with work already queued at upgrade time start level, at virtual time 0
    op.execute(
        "INSERT INTO fair_share (queue, owner_id, vtime, served_jobs, served_work, updated_at) "
        "SELECT queue, owner_id, 0.0, 0, 0.0, CURRENT_TIMESTAMP FROM jobs WHERE status = 'queued' "
        "GROUP BY queue, owner_id"
    )
    op.create_index(
        "ix_jobs_queued_by_owner", "jobs", ["queue", "owner_id", sa.text("priority DESC"), "created_at", "id"],
        unique=False, postgresql_where=sa.text("status = 'queued'"), sqlite_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_by_owner", table_name="jobs")
    op.drop_index(op.f("ix_fair_share_queue_vtime"), table_name="fair_share")
    op.drop_table("fair_share")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("weight")
