"""The model worker's spans of a job's trace (see `storage.tracing`), recorded once the outcome is known.

From the claimed row's timestamps and the timings the worker measured, it records `unipic.queue` (queued to
claimed), `unipic.model` (the batch's model call), `unipic.upload` (encode + upload) and `unipic.complete`,
all under `unipic.job.run` (claimed to settled); a failure records `unipic.job.failed` with its error code.
Nothing happens while tracing is off. It knows nothing of how the batch ran.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import tracing
from storage.records import JobRecord


def trace_success(job: JobRecord, call_seconds: float, upload_seconds: float, call_size: int, recorded: bool,
                  completed_at: datetime | None = None) -> None:
    """Spans of a job whose result was written (`recorded` False: its lease was lost, the write was refused)."""
    if not tracing.enabled():
        return
    end = completed_at or datetime.now(UTC)
    uploaded_from = end - timedelta(seconds=upload_seconds or 0.0)
    model_from = uploaded_from - timedelta(seconds=call_seconds or 0.0)
    claimed = job.started_at or model_from
    waited_from = job.queued_at or job.created_at
    tracing.record(job.id, "unipic.queue", waited_from, claimed, queue=job.queue)
    tracing.record(job.id, "unipic.model", max(model_from, claimed), uploaded_from, batch_size=call_size,
                   kind=job.kind, compat_key=job.compat_key)
    tracing.record(job.id, "unipic.upload", uploaded_from, end)
    tracing.record(job.id, "unipic.complete", end, end, recorded=recorded)
    tracing.record(job.id, "unipic.job.run", claimed, end, outcome="succeeded" if recorded else "stale")


def trace_failure(job_id: str, code: str, message: str) -> None:
    if tracing.enabled():
        now = datetime.now(UTC)
        tracing.record(job_id, "unipic.job.failed", now, now, error_code=code, error_message=message[:200])
