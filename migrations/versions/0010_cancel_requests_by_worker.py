"""cancel requests by worker: a partial index for the gateway's cancel long-poll

`POST /v1/worker/cancels` reads a worker's running jobs that have a cancel request each time it polls (a busy
gateway worker about every 5 s, and after each cancel it hears); the rows that match are a handful at any time,
so the index holds only them (`cancel_requested AND status = 'running'`), keyed by `worker_id`: no entry for the
other rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CANCEL_REQUESTED_RUNNING = "cancel_requested AND status = 'running'"


def upgrade() -> None:
    op.create_index("ix_jobs_cancel_requested_by_worker", "jobs", ["worker_id"], unique=False,
                    postgresql_where=sa.text(CANCEL_REQUESTED_RUNNING), sqlite_where=sa.text(CANCEL_REQUESTED_RUNNING))


def downgrade() -> None:
    op.drop_index("ix_jobs_cancel_requested_by_worker", table_name="jobs")
