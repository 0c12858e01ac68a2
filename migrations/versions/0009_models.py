"""models: the model a job asks for, and the model a worker holds

`jobs.model` is the routing key of the model a job named (storage.routing.served_model): NULL for the deployment's
default model, which every job before this revision ran on, so existing rows need no backfill; a named model's
jobs sit in queues that carry its name. `workers.model_name` (NULL: the default) and `workers.checkpoint_hash` (a
digest of the checkpoint's weight files, computed once at load) are what a worker advertises; `GET /v1/models`
lists the models of live workers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(length=64), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("model_name", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("checkpoint_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("checkpoint_hash")
        batch.drop_column("model_name")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model")
