"""Typed views of the API's answers (jobs, batches, uploads, webhook events).

Field names follow the API's OpenAPI document (`/openapi.json`); a test in the server's repository checks that
each model here has the fields of its response schema. Models accept fields they do not know, so an SDK
older than the server keeps working. They hold data only: no HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Model):
    step: int
    total: int


class Image(_Model):
    url: str
    expires_at: datetime
    width: int
    height: int


class Result(_Model):
    images: list[Image] = Field(default_factory=list)
    text: str | None = None
    expired: bool = Field(False, description="The result was deleted (retention or DELETE)")


class JobError(_Model):
    code: str
    message: str | None = None


class Execution(_Model):
    worker: str | None = None
    batch_size: int | None = None
    attempts: int = 0
    queue_seconds: float | None = None
    model_seconds: float | None = None
    upload_seconds: float | None = None
    model_id: str | None = None
    model_revision: str | None = None


class Job(_Model):
    """A job as `GET /v1/jobs/{id}` shows it."""

    id: str
    kind: Literal["generate", "edit", "understand"]
    status: str
    priority: int = 0
    model: str = Field("unipic", description="The model it runs on; `unipic` is the deployment's default")
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    queue_position: int | None = None
    estimated_start_at: datetime | None = None
    result: Result | None = None
    error: JobError | None = None
    execution: Execution = Field(default_factory=Execution)
    batch_id: str | None = None
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    cancel_requested: bool = False
    warnings: list[str] = Field(default_factory=list, description="Why a job waits, e.g. no_worker_for_queue")

    @property
    def done(self) -> bool:
        """Finished, one way or another (succeeded, failed, canceled or expired)."""
        return self.status in TERMINAL_STATUSES

    @property
    def text(self) -> str | None:
        """An understand job's answer."""
        return self.result.text if self.result else None

    @property
    def image_urls(self) -> list[str]:
        return [image.url for image in self.result.images] if self.result else []


class JobsPage(_Model):
    data: list[Job]
    next_cursor: str | None = None


class BatchCounts(_Model):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled + self.expired


class Batch(_Model):
    """A batch as `GET /v1/batches/{id}` shows it."""

    id: str
    status: str
    total: int
    counts: BatchCounts = Field(default_factory=BatchCounts)
    created_at: datetime
    finished_at: datetime | None = None
    canceled_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    manifest_url: str | None = None
    manifest_expires_at: datetime | None = None
    estimated_completion_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "canceled") or self.finished_at is not None


class BatchesPage(_Model):
    data: list[Batch]
    next_cursor: str | None = None


class Upload(_Model):
    """`POST /v1/uploads`: where to PUT the image bytes."""

    upload_id: str
    url: str
    method: str = "PUT"
    expires_at: datetime
    max_bytes: int
    headers: dict[str, str] = Field(default_factory=dict)


class UploadDone(_Model):
    upload_id: str
    bytes: int


class WebhookEvent(_Model):
    """A verified webhook delivery: `type` (`job.succeeded`, `batch.completed`, ...), `timestamp`, `data`.

    `job` / `batch` give `data` as a typed `Job` or `Batch` for the event types that carry one."""

    type: str
    timestamp: datetime | str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(None, description="The `webhook-id` header: stable across retries")

    @property
    def job(self) -> Job | None:
        return Job.model_validate(self.data) if self.type.startswith("job.") else None

    @property
    def batch(self) -> Batch | None:
        return Batch.model_validate(self.data) if self.type.startswith("batch.") else None
