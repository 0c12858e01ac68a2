"""`job.progress` webhook events: when one is written, and when a due one is held back instead of sent.

GPU workers record progress on the job row many times a second (`JobStore.set_progress`) and write no outbox
rows for it, so a slow webhook receiver can never slow sampling down. On each dispatcher tick
`write_progress_events` writes one outbox row (through `storage.webhooks.outbox.OutboxWriter`: same target and
subscription rules as every other event) for every running job whose target subscribes to `job.progress`, whose
step moved since its last progress event and whose last progress event is older than the interval. At claim
time `progress_hold` drops a progress event that a newer one superseded or whose job stopped running, and defers
one due sooner than the interval after the last progress send of its job. Progress events are best effort:
never retried (see `workers.webhooks`). Functions over the caller's session; `storage.webhooks.store` calls them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import dialect
from storage.states import EventType, JobStatus
from storage.tables import Job, WebhookAttempt, WebhookEvent
from storage.webhooks.outbox import OutboxWriter

log = logging.getLogger(__name__)

PROGRESS = EventType.JOB_PROGRESS
_EMITTER_LOCK_ID = 0x756E_6970_6977_6870  # pg advisory lock: one emitter at a time across workers


def write_progress_events(s: Session, now: datetime, interval: timedelta, limit: int = 500) -> int:
    """Write due `job.progress` events into the session's transaction; returns how many were written."""
    if not _take_emitter_lock(s):
        return 0
    jobs = s.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.progress_total.is_not(None)).limit(limit)
    ).all()
    outbox = OutboxWriter(s)
    written = 0
    for job in jobs:
        if job.webhook_url and PROGRESS not in (job.webhook_events or []):
            continue  # its own webhook does not subscribe (the common case: no query needed)
        if not _due(s, job, now, interval):
            continue
        row = outbox.job_event(job, PROGRESS, now)
        if row is None:
            continue
        data = dict(row.payload["data"])
        data["progress"] = {"step": job.progress_step or 0, "total": job.progress_total}
        row.payload = {**row.payload, "data": data}
        written += 1
        log.debug("job %s progress event %s step %s/%s", job.id, row.id, job.progress_step, job.progress_total)
    return written


def progress_hold(s: Session, row: WebhookEvent, now: datetime, interval: timedelta) -> str | datetime | None:
    """Whether a due event must wait: None sends it now; a string drops it (the reason); a time defers it."""
    if row.event_type != PROGRESS or row.job_id is None:
        return None
    job_status = s.scalar(select(Job.status).where(Job.id == row.job_id))
    newer = s.scalar(
        select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.job_id == row.job_id, WebhookEvent.event_type == PROGRESS,
            WebhookEvent.id > row.id, WebhookEvent.status.in_(("pending", "delivered", "failed")),
        )
    )
    if job_status != JobStatus.RUNNING or newer:
        return "progress superseded" if newer else "job no longer running"
    last_sent = s.scalar(
        select(func.max(WebhookAttempt.started_at))
        .join(WebhookEvent, WebhookEvent.id == WebhookAttempt.event_id)
        .where(WebhookEvent.job_id == row.job_id, WebhookEvent.event_type == PROGRESS)
    )
    if last_sent is not None and last_sent + interval > now:
        return last_sent + interval
    return None


def _due(s: Session, job: Job, now: datetime, interval: timedelta) -> bool:
    last = s.execute(
        select(WebhookEvent.created_at, WebhookEvent.payload)
        .where(WebhookEvent.job_id == job.id, WebhookEvent.event_type == PROGRESS)
        .order_by(WebhookEvent.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return bool(job.progress_step)
    created_at, payload = last
    last_step = (((payload or {}).get("data") or {}).get("progress") or {}).get("step")
    return bool(last_step != job.progress_step and created_at + interval <= now)


def _take_emitter_lock(s: Session) -> bool:
    return dialect.try_lock(s, _EMITTER_LOCK_ID)  # SQLite: BEGIN IMMEDIATE already serializes writers
