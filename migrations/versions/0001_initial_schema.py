"""initial schema

API keys, batches, jobs, workers, webhook endpoints, the webhook outbox and its attempts, and the
embedded-mode ephemeral key/value table.

Static (no imports from the application), reversible, every constraint named by the naming convention of
storage.tables. Timestamps are timezone-aware; JSON is JSONB on Postgres.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table("api_keys",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("key_prefix", sa.String(length=16), nullable=False),
    sa.Column("key_hash", sa.String(length=64), nullable=False),
    sa.Column("webhook_secret", sa.String(length=100), nullable=False),
    sa.Column("previous_webhook_secret", sa.String(length=100), nullable=True),
    sa.Column("previous_secret_expires_at", UTC_DATETIME, nullable=True),
    sa.Column("default_webhook_url", sa.Text(), nullable=True),
    sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
    sa.Column("max_active_jobs", sa.Integer(), nullable=True),
    sa.Column("created_at", UTC_DATETIME, nullable=False),
    sa.Column("revoked_at", UTC_DATETIME, nullable=True),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash"))
    )
    op.create_table("ephemeral",
    sa.Column("key", sa.String(length=300), nullable=False),
    sa.Column("value", JSON_TYPE, nullable=False),
    sa.Column("expires_at", UTC_DATETIME, nullable=True),
    sa.PrimaryKeyConstraint("key", name=op.f("pk_ephemeral"))
    )
    op.create_index(op.f("ix_ephemeral_expires_at"), "ephemeral", ["expires_at"], unique=False)
    op.create_table("workers",
    sa.Column("id", sa.String(length=200), nullable=False),
    sa.Column("hostname", sa.String(length=200), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("device", sa.String(length=50), nullable=True),
    sa.Column("model_id", sa.String(length=200), nullable=True),
    sa.Column("kinds", JSON_TYPE, nullable=True),
    sa.Column("max_pixels", sa.BigInteger(), nullable=True),
    sa.Column("max_batch", sa.Integer(), nullable=True),
    sa.Column("queues", JSON_TYPE, nullable=True),
    sa.Column("started_at", UTC_DATETIME, nullable=False),
    sa.Column("last_heartbeat_at", UTC_DATETIME, nullable=False),
    sa.Column("stopped_at", UTC_DATETIME, nullable=True),
    sa.Column("batches_served", sa.Integer(), nullable=False),
    sa.Column("jobs_served", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_workers"))
    )
    op.create_index(op.f("ix_workers_stopped_at_last_heartbeat_at"), "workers", ["stopped_at", "last_heartbeat_at"], unique=False)
    op.create_table("batches",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("owner_id", sa.String(length=36), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("total", sa.Integer(), nullable=False),
    sa.Column("webhook_url", sa.Text(), nullable=True),
    sa.Column("webhook_events", JSON_TYPE, nullable=True),
    sa.Column("metadata", JSON_TYPE, nullable=True),
    sa.Column("manifest_key", sa.String(length=300), nullable=True),
    sa.Column("created_at", UTC_DATETIME, nullable=False),
    sa.Column("finished_at", UTC_DATETIME, nullable=True),
    sa.Column("canceled_at", UTC_DATETIME, nullable=True),
    sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name=op.f("fk_batches_owner_id_api_keys")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_batches"))
    )
    op.create_index(op.f("ix_batches_owner_id_created_at"), "batches", ["owner_id", "created_at"], unique=False)
    op.create_table("webhook_endpoints",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("owner_id", sa.String(length=36), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    sa.Column("disabled_at", UTC_DATETIME, nullable=True),
    sa.Column("disabled_reason", sa.Text(), nullable=True),
    sa.Column("created_at", UTC_DATETIME, nullable=False),
    sa.Column("last_success_at", UTC_DATETIME, nullable=True),
    sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name=op.f("fk_webhook_endpoints_owner_id_api_keys")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    sa.UniqueConstraint("owner_id", "url", name=op.f("uq_webhook_endpoints_owner_id_url"))
    )
    op.create_table("webhook_events",
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("owner_id", sa.String(length=36), nullable=False),
    sa.Column("job_id", sa.String(length=36), nullable=True),
    sa.Column("batch_id", sa.String(length=36), nullable=True),
    sa.Column("event_type", sa.String(length=40), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", UTC_DATETIME, nullable=True),
    sa.Column("created_at", UTC_DATETIME, nullable=False),
    sa.Column("delivered_at", UTC_DATETIME, nullable=True),
    sa.Column("payload", JSON_TYPE, nullable=False),
    sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name=op.f("fk_webhook_events_owner_id_api_keys")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events"))
    )
    op.create_index(op.f("ix_webhook_events_job_id"), "webhook_events", ["job_id"], unique=False)
    op.create_index(op.f("ix_webhook_events_owner_id_created_at"), "webhook_events", ["owner_id", "created_at"], unique=False)
    op.create_index(op.f("ix_webhook_events_status_next_attempt_at"), "webhook_events", ["status", "next_attempt_at"], unique=False)
    op.create_table("jobs",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("owner_id", sa.String(length=36), nullable=False),
    sa.Column("batch_id", sa.String(length=36), nullable=True),
    sa.Column("custom_id", sa.String(length=200), nullable=True),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("params", JSON_TYPE, nullable=False),
    sa.Column("compat_key", sa.String(length=200), nullable=False),
    sa.Column("queue", sa.String(length=100), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("lease_token", sa.String(length=36), nullable=True),
    sa.Column("lease_expires_at", UTC_DATETIME, nullable=True),
    sa.Column("worker_id", sa.String(length=200), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    sa.Column("created_at", UTC_DATETIME, nullable=False),
    sa.Column("queued_at", UTC_DATETIME, nullable=True),
    sa.Column("started_at", UTC_DATETIME, nullable=True),
    sa.Column("finished_at", UTC_DATETIME, nullable=True),
    sa.Column("deadline_at", UTC_DATETIME, nullable=True),
    sa.Column("last_enqueued_at", UTC_DATETIME, nullable=True),
    sa.Column("progress_step", sa.Integer(), nullable=True),
    sa.Column("progress_total", sa.Integer(), nullable=True),
    sa.Column("model_id", sa.String(length=200), nullable=True),
    sa.Column("model_revision", sa.String(length=100), nullable=True),
    sa.Column("seed", sa.BigInteger(), nullable=True),
    sa.Column("batch_size", sa.Integer(), nullable=True),
    sa.Column("queue_seconds", sa.Float(), nullable=True),
    sa.Column("model_seconds", sa.Float(), nullable=True),
    sa.Column("upload_seconds", sa.Float(), nullable=True),
    sa.Column("result_keys", JSON_TYPE, nullable=True),
    sa.Column("result_text", sa.Text(), nullable=True),
    sa.Column("error_code", sa.String(length=50), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("webhook_url", sa.Text(), nullable=True),
    sa.Column("webhook_events", JSON_TYPE, nullable=True),
    sa.Column("metadata", JSON_TYPE, nullable=True),
    sa.Column("idempotency_key", sa.String(length=200), nullable=True),
    sa.Column("request_hash", sa.String(length=64), nullable=True),
    sa.Column("input_key", sa.String(length=300), nullable=True),
    sa.Column("pixels", sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_jobs_batch_id_batches")),
    sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name=op.f("fk_jobs_owner_id_api_keys")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    sa.UniqueConstraint("owner_id", "idempotency_key", name=op.f("uq_jobs_owner_id_idempotency_key"))
    )
    op.create_index(op.f("ix_jobs_batch_id_status"), "jobs", ["batch_id", "status"], unique=False)
    op.create_index(op.f("ix_jobs_owner_id_created_at"), "jobs", ["owner_id", "created_at"], unique=False)
    op.create_index(op.f("ix_jobs_status_compat_key_priority_created_at"), "jobs", ["status", "compat_key", "priority", "created_at"], unique=False)
    op.create_index(op.f("ix_jobs_status_lease_expires_at"), "jobs", ["status", "lease_expires_at"], unique=False)
    op.create_table("webhook_attempts",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("event_id", sa.String(length=40), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("started_at", UTC_DATETIME, nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("latency_ms", sa.Float(), nullable=True),
    sa.Column("response_snippet", sa.Text(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(["event_id"], ["webhook_events.id"], name=op.f("fk_webhook_attempts_event_id_webhook_events"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts"))
    )
    op.create_index(op.f("ix_webhook_attempts_event_id_attempt"), "webhook_attempts", ["event_id", "attempt"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_attempts_event_id_attempt"), table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index(op.f("ix_jobs_status_lease_expires_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_compat_key_priority_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_owner_id_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_batch_id_status"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_webhook_events_status_next_attempt_at"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_owner_id_created_at"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_job_id"), table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
    op.drop_index(op.f("ix_batches_owner_id_created_at"), table_name="batches")
    op.drop_table("batches")
    op.drop_index(op.f("ix_workers_stopped_at_last_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    op.drop_index(op.f("ix_ephemeral_expires_at"), table_name="ephemeral")
    op.drop_table("ephemeral")
    op.drop_table("api_keys")
