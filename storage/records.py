"""Plain records the stores hand out and take in: detached from any session, safe to pass between threads.

`NewJob`/`NewBatch` are what the API submits; `JobRecord`/`BatchRecord` are snapshots of rows; `Claim` is a
worker's fenced hold on a running job. Tables (storage.tables) stay internal to storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from storage.routing import JobRef
from storage.states import TERMINAL_STATUSES
from storage.tables import Batch, Job


@dataclass(frozen=True)
class NewJob:
    """A validated, normalized job to insert (status queued). `id` may be chosen in advance (input keys)."""

    owner_id: str
    kind: str
    params: dict[str, Any]
    compat_key: str
    queue: str
    priority: int = 0
    pixels: int = 0  # width*height*num_images: what the job weighs in a batch's pixel budget
    seed: int | None = None
    custom_id: str | None = None
    input_key: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    max_attempts: int = 3
    deadline_at: datetime | None = None
    id: str | None = None
    model: str | None = None  # the model's routing key (storage.routing.served_model); None: the default


@dataclass(frozen=True)
class NewBatch:
    """A batch to insert together with its jobs."""

    owner_id: str
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    metadata: dict[str, Any] | None = None
    id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one running job; every later write is fenced by `lease_token`."""

    job_id: str
    lease_token: str


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one `jobs` row."""

    id: str
    owner_id: str
    batch_id: str | None
    custom_id: str | None
    kind: str
    status: str
    priority: int
    params: dict[str, Any]
    compat_key: str
    queue: str
    attempts: int
    max_attempts: int
    lease_token: str | None
    lease_expires_at: datetime | None
    worker_id: str | None
    cancel_requested: bool
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    last_enqueued_at: datetime | None
    progress_step: int | None
    progress_total: int | None
    model_id: str | None
    model_revision: str | None
    seed: int | None
    batch_size: int | None
    queue_seconds: float | None
    model_seconds: float | None
    upload_seconds: float | None
    result_keys: list[str] | None
    result_text: str | None
    error_code: str | None
    error_message: str | None
    webhook_url: str | None
    webhook_events: list[str] | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    request_hash: str | None
    input_key: str | None
    pixels: int
    purged_at: datetime | None = None  # storage.lifecycle.store: objects deleted (result TTL or erase); status unchanged
    claim_id: str | None = None  # the worker's id for the claim that took it (idempotent gateway claims)
    results_swept_at: datetime | None = None  # storage.lifecycle.store: stale attempts' objects deleted
    model: str | None = None  # the model it asked for, as a routing key; None: the deployment default

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def ref(self) -> JobRef:
        """What a `run_batch` message needs: the job id and its queue."""
        return JobRef(self.id, self.queue)

    @property
    def claim(self) -> Claim | None:
        """The current claim, for a running job."""
        return Claim(self.id, self.lease_token) if self.lease_token else None

    @classmethod
    def of(cls, row: Job) -> JobRecord:
        return cls(**{f.name: getattr(row, "metadata_" if f.name == "metadata" else f.name) for f in _JOB_FIELDS})


_JOB_FIELDS = fields(JobRecord)


@dataclass(frozen=True)
class BatchRecord:
    """A snapshot of one `batches` row plus its jobs' per-status counts."""

    id: str
    owner_id: str
    status: str
    total: int
    webhook_url: str | None
    webhook_events: list[str] | None
    metadata: dict[str, Any] | None
    manifest_key: str | None
    created_at: datetime
    finished_at: datetime | None
    canceled_at: datetime | None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Batch, counts: dict[str, int] | None = None) -> BatchRecord:
        names = [f.name for f in fields(cls) if f.name != "counts"]
        values = {n: getattr(row, "metadata_" if n == "metadata" else n) for n in names}
        return cls(**values, counts=dict(counts or {}))
