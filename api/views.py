"""Read models: storage records rendered as the API shows them (`JobOut`, `BatchOut`).

Result object keys become presigned GET URLs with an explicit `expires_at` (S3), or signed links to the API's own
download route (local directory); live progress from the ephemeral store wins over the row's last write.
Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

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

IMAGE_EXTENSIONS = (".png", ".webp", ".jpg", ".jpeg")
Presign = Callable[[str], tuple[str, datetime]]


def job_out(
    job: JobRecord, presign: Presign, queue_position: int | None = None,
    live_progress: tuple[int, int] | None = None,
) -> JobOut:
    """One job as `JobOut`."""
    return JobOut(
        id=job.id, kind=job.kind, status=job.status, priority=job.priority,  # type: ignore[arg-type]
        params=job.params, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        progress=_progress(job, live_progress),
        queue_position=queue_position if job.status == "queued" else None,
        result=_result(job, presign), error=_error(job), execution=_execution(job),
        batch_id=job.batch_id, custom_id=job.custom_id, metadata=job.metadata,
        cancel_requested=job.cancel_requested,
    )


def _progress(job: JobRecord, live: tuple[int, int] | None) -> Progress | None:
    if job.status == "succeeded":
        total = job.progress_total or job.params.get("steps") or job.params.get("max_new_tokens") or 1
        return Progress(step=int(total), total=int(total))
    if live is not None and job.status == "running":
        return Progress(step=live[0], total=live[1])
    if job.progress_total:
        return Progress(step=job.progress_step or 0, total=job.progress_total)
    return None


def _result(job: JobRecord, presign: Presign) -> ResultOut | None:
    if job.status != "succeeded":
        return None
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


def batch_out(batch: BatchRecord, manifest: tuple[str, datetime] | None = None) -> BatchOut:
    """One batch as `BatchOut` (with its manifest link when one is given)."""
    counts: dict[str, Any] = {k: v for k, v in batch.counts.items() if k in BatchCounts.model_fields}
    return BatchOut(
        id=batch.id, status=batch.status, total=batch.total, counts=BatchCounts(**counts),  # type: ignore[arg-type]
        created_at=batch.created_at, finished_at=batch.finished_at, canceled_at=batch.canceled_at,
        metadata=batch.metadata,
        manifest_url=manifest[0] if manifest else None, manifest_expires_at=manifest[1] if manifest else None,
    )
