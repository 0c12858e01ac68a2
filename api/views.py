"""Read models: storage records rendered as the API shows them (`JobOut`, `BatchOut`).

Result object keys become presigned GET URLs with an explicit `expires_at` (S3), or signed links to the API's own
download route (local directory); progress is the row's, as the worker last wrote it. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from api.intake.json_limits import safe_for_display
from api.schemas import (
    BatchCounts,
    BatchOut,
    ExecutionOut,
    ImageOut,
    JobErrorOut,
    JobOut,
    Progress,
    ResultOut,
)
from storage.records import BatchRecord, JobRecord
from storage.routing import DEFAULT_MODEL_ALIAS
from storage.states import BatchStatus, JobStatus

IMAGE_EXTENSIONS = (".png", ".webp", ".jpg", ".jpeg")
Presign = Callable[[str], tuple[str, datetime]]


def job_out(job: JobRecord, presign: Presign, queue_position: int | None = None,
            estimated_start_at: datetime | None = None, warnings: list[str] | None = None) -> JobOut:
    """One job as `JobOut`."""
    return JobOut(
        id=job.id, kind=job.kind, status=JobStatus(job.status), priority=job.priority,
        model=job.model or DEFAULT_MODEL_ALIAS, params=job.params, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        progress=_progress(job),
        queue_position=queue_position if job.status == JobStatus.QUEUED else None,
        estimated_start_at=estimated_start_at if job.status == JobStatus.QUEUED else None,
        result=_result(job, presign), error=_error(job), execution=_execution(job),
        batch_id=job.batch_id, custom_id=job.custom_id, metadata=safe_for_display(job.metadata),
        cancel_requested=job.cancel_requested, warnings=warnings or [],
    )


def _progress(job: JobRecord) -> Progress | None:
    if job.status == JobStatus.SUCCEEDED:
        total = job.progress_total or job.params.get("steps") or job.params.get("max_new_tokens") or 1
        return Progress(step=int(total), total=int(total))
    if job.progress_total:
        return Progress(step=job.progress_step or 0, total=job.progress_total)
    return None


def _result(job: JobRecord, presign: Presign) -> ResultOut | None:
    if job.status != JobStatus.SUCCEEDED:
        return None
    if job.purged_at is not None:  # a tombstone: the objects and the text are gone (storage.lifecycle.store)
        return ResultOut(expired=True)
    images = []
    for key in job.result_keys or []:
        if key.lower().endswith(IMAGE_EXTENSIONS):
            url, expires_at = presign(key)
            width = int(job.params.get("width", 0))
            height = int(job.params.get("height", 0))
            images.append(ImageOut(url=url, expires_at=expires_at, width=width, height=height))
    return ResultOut(images=images, text=job.result_text)


def _error(job: JobRecord) -> JobErrorOut | None:
    if job.error_code is None:
        return None
    return JobErrorOut(code=job.error_code, message=job.error_message)


def _execution(job: JobRecord) -> ExecutionOut:
    return ExecutionOut(
        worker=job.worker_id, batch_size=job.batch_size, attempts=job.attempts,
        queue_seconds=job.queue_seconds, model_seconds=job.model_seconds, upload_seconds=job.upload_seconds,
        model_id=job.model_id, model_revision=job.model_revision,
    )


def batch_out(batch: BatchRecord, manifest: tuple[str, datetime] | None = None,
              estimated_completion_at: datetime | None = None) -> BatchOut:
    """One batch as `BatchOut` (with its manifest link when one is given)."""
    counts: dict[str, Any] = {k: v for k, v in batch.counts.items() if k in BatchCounts.model_fields}
    return BatchOut(
        id=batch.id, status=BatchStatus(batch.status), total=batch.total, counts=BatchCounts(**counts),
        created_at=batch.created_at, finished_at=batch.finished_at, canceled_at=batch.canceled_at,
        metadata=safe_for_display(batch.metadata),
        manifest_url=manifest[0] if manifest else None, manifest_expires_at=manifest[1] if manifest else None,
        estimated_completion_at=estimated_completion_at if batch.finished_at is None else None,
    )
