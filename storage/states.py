"""The job vocabulary, defined once: job and batch statuses, job error codes, webhook event types.

Every other module (tables, the state machine, API schemas, workers, webhooks, the status page) imports these
names from here, so a status, an error code or an event name exists in exactly one place. `StrEnum` members are
plain strings: they compare equal to their values, serialize to JSON as such and bind as SQL strings. This module
knows nothing of tables or HTTP.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's state; `storage.jobs.store.JobStore` is the only code that moves a job between them."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)
ACTIVE_STATUSES: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)


class BatchStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELED = "canceled"


class JobErrorCode(StrEnum):
    """`error.code` of a job that did not succeed: stable, machine-readable, documented in the README."""

    WORKER_LOST = "worker_lost"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_ERROR = "model_error"
    INVALID_INPUT = "invalid_input"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    EXPIRED = "expired"


class EventType(StrEnum):
    """Webhook event types; outbox rows, payloads and API schemas all use these names."""

    JOB_STARTED = "job.started"
    JOB_PROGRESS = "job.progress"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELED = "job.canceled"
    BATCH_COMPLETED = "batch.completed"


# Without explicit `webhook_events`, a job reports every state event except the chatty progress one.
DEFAULT_EVENT_TYPES: tuple[EventType, ...] = tuple(e for e in EventType if e is not EventType.JOB_PROGRESS)
