"""lease-scoped results: the claim id of a running job's claim, and the sweep of stale attempts' objects

`jobs.claim_id` is the id a gateway worker sends with a claim (a uuid per claim attempt, reused on retry), so a
retried claim whose first answer was lost returns the same jobs instead of a second batch
(`JobStore.claimed_by`, indexed). `jobs.results_swept_at` is when the sweeper deleted the objects that earlier or
stale attempts wrote under `results/{job}/` and the finished job does not record (storage.lifecycle.store); the partial
index `ix_jobs_unswept_finished` is what that bounded sweep walks. Jobs finished before this revision wrote
unscoped keys that they record, so they are stamped as swept here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSWEPT = "results_swept_at IS NULL AND finished_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("results_swept_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET results_swept_at = finished_at WHERE finished_at IS NOT NULL")
    op.create_index(op.f("ix_jobs_claim_id"), "jobs", ["claim_id"], unique=False)
    op.create_index("ix_jobs_unswept_finished", "jobs", ["finished_at"], unique=False,
                    postgresql_where=sa.text(UNSWEPT), sqlite_where=sa.text(UNSWEPT))


def downgrade() -> None:
    op.drop_index("ix_jobs_unswept_finished", table_name="jobs")
    op.drop_index(op.f("ix_jobs_claim_id"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_swept_at")
        batch.drop_column("claim_id")
