"""data lifecycle: upload slots with expiry and a storage reservation, result purge tombstones

`uploads` (one row per `POST /v1/uploads` slot, deleted with its object when it expires), `jobs.purged_at` (when
the job's input and result objects were deleted, by the result TTL or `DELETE /v1/jobs/{id}`) and
`ix_jobs_unpurged_finished`, a partial index over finished jobs not yet purged, which the sweeper walks, and
`ix_jobs_active_by_owner` over queued and running jobs only, which the exact per-key quota (storage.lifecycle.quota) counts
in every insert.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPURGED = "purged_at IS NULL AND finished_at IS NOT NULL"
ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_unpurged_finished", "jobs", ["finished_at"], unique=False,
                    postgresql_where=sa.text(UNPURGED), sqlite_where=sa.text(UNPURGED))
    op.create_index("ix_jobs_active_by_owner", "jobs", ["owner_id"], unique=False,
                    postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reserved_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name=op.f("fk_uploads_owner_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_expires_at"), "uploads", ["expires_at"], unique=False)
    op.create_index(op.f("ix_uploads_owner_id_expires_at"), "uploads", ["owner_id", "expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_owner_id_expires_at"), table_name="uploads")
    op.drop_index(op.f("ix_uploads_expires_at"), table_name="uploads")
    op.drop_table("uploads")
    op.drop_index("ix_jobs_active_by_owner", table_name="jobs")
    op.drop_index("ix_jobs_unpurged_finished", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("purged_at")
