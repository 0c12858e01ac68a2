"""The database schema: SQLAlchemy 2 typed tables, one class per table.

Owned here and read by `migrations/` (Alembic autogenerate compares against `metadata`). Constraint and index
names follow one naming convention so migrations are static and reversible. Tables are storage-internal rows,
never API schemas; the status values they hold are defined in `storage.states`. Datetimes are timezone-aware
UTC on every backend; JSON is JSONB on Postgres.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage import clock
from storage.dialect import naive_datetimes
from storage.states import BatchStatus, JobStatus

utcnow = clock.utcnow  # defined in storage.clock (importable without the schema); kept here for storage modules

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OUTBOX_STATUSES = ("pending", "delivered", "failed", "dropped")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if naive_datetimes(dialect) else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType,
    }


metadata = Base.metadata


class ApiKey(Base):
    """An API key: only its sha256 is stored. Its id is the owner id of jobs and batches."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    default_webhook_url: Mapped[str | None] = mapped_column(Text)
    default_webhook_events: Mapped[list[Any] | None]
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # fair-share weight (storage.scheduling.policy): a key with weight 2 gets twice the work of a weight-1 key
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default=text("1.0"))


class Batch(Base):
    """A batch submission; per-status counts are derived from its jobs."""

    __tablename__ = "batches"
    __table_args__ = (Index(None, "owner_id", "created_at"), UniqueConstraint("owner_id", "idempotency_key"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_keys.id"))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.IN_PROGRESS.value)
    total: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[Any] | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    manifest_key: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    canceled_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))  # POST /v1/batches Idempotency-Key
    request_hash: Mapped[str | None] = mapped_column(String(64))


class Job(Base):
    """One unit of user work. Only `storage.jobs.store.JobStore` changes `status`."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "status", "compat_key", "priority", "created_at"),
        Index(None, "owner_id", "created_at"),
        UniqueConstraint("owner_id", "idempotency_key"),
        Index(None, "batch_id", "status"),
        Index(None, "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_keys.id"))
    batch_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("batches.id"))
    custom_id: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]]
    compat_key: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    last_enqueued_at: Mapped[datetime | None]
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    model_id: Mapped[str | None] = mapped_column(String(200))
    model_revision: Mapped[str | None] = mapped_column(String(100))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    queue_seconds: Mapped[float | None] = mapped_column(Float)
    model_seconds: Mapped[float | None] = mapped_column(Float)
    upload_seconds: Mapped[float | None] = mapped_column(Float)
    result_keys: Mapped[list[Any] | None]
    result_text: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[Any] | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    input_key: Mapped[str | None] = mapped_column(String(300))
    pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    # data lifecycle (storage.lifecycle.store): when its objects were deleted (result TTL or DELETE); status unchanged
    purged_at: Mapped[datetime | None]
    # the worker's id for the claim that took this job (a retried gateway claim returns the same jobs)
    claim_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # when stale attempts' objects under results/{job}/ were deleted (storage.lifecycle.store.sweep_stale_results)
    results_swept_at: Mapped[datetime | None]
    # the model the job asked for, as a routing key (storage.routing.served_model): NULL = the deployment default;
    # its queue carries it and only workers holding that model claim it. model_id/model_revision: what ran it
    model: Mapped[str | None] = mapped_column(String(64))


# The exact per-key quota (storage.lifecycle.quota) counts a key's active jobs on every insert: only active rows are indexed.
Index("ix_jobs_active_by_owner", Job.owner_id,
      postgresql_where=text("status IN ('queued', 'running')"), sqlite_where=text("status IN ('queued', 'running')"))

# A gateway worker's cancel long-poll (storage.jobs.queries.cancel_requested_of) reads its running jobs with a cancel
# request at every poll: only those rows (a handful at any time) are indexed, by worker.
CANCEL_REQUESTED_RUNNING = "cancel_requested AND status = 'running'"
Index("ix_jobs_cancel_requested_by_worker", Job.worker_id,
      postgresql_where=text(CANCEL_REQUESTED_RUNNING), sqlite_where=text(CANCEL_REQUESTED_RUNNING))

# The stale-results sweep (storage.lifecycle.store): finished jobs whose other attempts' objects are not yet deleted.
Index("ix_jobs_unswept_finished", Job.finished_at,
      postgresql_where=text("results_swept_at IS NULL AND finished_at IS NOT NULL"),
      sqlite_where=text("results_swept_at IS NULL AND finished_at IS NOT NULL"))

# The result-TTL sweep (storage.lifecycle.store): finished jobs whose objects are not yet deleted, oldest first.
Index("ix_jobs_unpurged_finished", Job.finished_at,
      postgresql_where=text("purged_at IS NULL AND finished_at IS NOT NULL"),
      sqlite_where=text("purged_at IS NULL AND finished_at IS NOT NULL"))


class Upload(Base):
    """An upload slot handed out by `POST /v1/uploads` (storage.lifecycle.store): it reserves `reserved_bytes` of its
    key's storage quota until it expires, when the sweeper deletes its object and the row."""

    __tablename__ = "uploads"
    __table_args__ = (Index(None, "owner_id", "expires_at"), Index(None, "expires_at"))

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    reserved_bytes: Mapped[int] = mapped_column(BigInteger)


# The claim's probe (storage.scheduling.policy): one key's best queued job in a queue, by priority then age. Partial, so
# the index holds only queued rows and stays small however many finished jobs the table keeps.
Index(
    "ix_jobs_queued_by_owner", Job.queue, Job.owner_id, Job.priority.desc(), Job.created_at, Job.id,
    postgresql_where=text("status = 'queued'"), sqlite_where=text("status = 'queued'"),
)


class FairShare(Base):
    """Per (queue, API key) virtual time for the fair-share claim: a row exists while the key has (or just had)
    queued work in the queue; `storage.scheduling.policy` owns every read and write of it."""

    __tablename__ = "fair_share"
    __table_args__ = (Index(None, "queue", "vtime"),)

    queue: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vtime: Mapped[float] = mapped_column(Float, default=0.0)
    served_jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    served_work: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process as it advertised itself, with its heartbeat."""

    __tablename__ = "workers"
    __table_args__ = (Index(None, "stopped_at", "last_heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(50))
    model_id: Mapped[str | None] = mapped_column(String(200))
    kinds: Mapped[list[Any] | None]
    max_pixels: Mapped[int | None] = mapped_column(BigInteger)
    max_batch: Mapped[int | None] = mapped_column(Integer)
    queues: Mapped[list[Any] | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
    batches_served: Mapped[int] = mapped_column(Integer, default=0)
    jobs_served: Mapped[int] = mapped_column(Integer, default=0)
    health: Mapped[dict[str, Any] | None]  # the worker's own report: failure streak, back-off (model workers)
    # "direct" (database, broker and bucket) or "remote" (the HTTPS worker gateway, api.gateway.routes)
    transport: Mapped[str] = mapped_column(String(20), default="direct", server_default=text("'direct'"))
    # the model it holds: its name (NULL: the deployment default) and a digest of its checkpoint's weight files
    model_name: Mapped[str | None] = mapped_column(String(64))
    checkpoint_hash: Mapped[str | None] = mapped_column(String(64))


class WorkerToken(Base):
    """A worker token (`wk_...`) for the HTTPS worker gateway: only its sha256 is stored (storage.fleet.tokens)."""

    __tablename__ = "worker_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kinds: Mapped[list[Any]]
    max_pixels: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class WebhookEndpoint(Base):
    """A webhook URL an owner delivers to; 410 Gone disables it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("owner_id", "url"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_keys.id"))
    url: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_success_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """The durable outbox: one row per event to deliver; its id is the stable `webhook-id` header."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        Index(None, "owner_id", "created_at"),
        Index(None, "job_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), ForeignKey("api_keys.id"))
    job_id: Mapped[str | None] = mapped_column(String(36))
    batch_id: Mapped[str | None] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]]


class WebhookAttempt(Base):
    """One delivery attempt of an outbox event, kept for the delivery log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index(None, "event_id", "attempt"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_events.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    response_snippet: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class KeyValue(Base):
    """Short-lived values for the embedded (Redis-less) mode: progress, rate-limit windows, fan-out events."""

    __tablename__ = "ephemeral"
    __table_args__ = (Index(None, "expires_at"),)

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    value: Mapped[dict[str, Any]]
    expires_at: Mapped[datetime | None]
