"""`job.progress` webhook events, derived from running jobs' progress at most once per interval per job.

GPU workers record progress on the job row many times a second (`JobStore.set_progress`) and write no outbox
rows for it, so a slow webhook receiver can never slow sampling down. The webhook dispatcher calls
`emit_progress_events` on each tick: for every running job whose webhook target subscribes to `job.progress`,
whose step moved since its last progress event and whose last progress event is older than the interval, one
outbox row is written through `storage.outbox.OutboxWriter` (same target and subscription rules as every other
event). Progress events are best effort: they are never retried (see `workers.webhooks`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import is_sqlite, write_session
from storage.outbox import OutboxWriter
from storage.tables import Job, WebhookEvent

log = logging.getLogger(__name__)

PROGRESS_EVENT = "job.progress"
_EMITTER_LOCK_ID = 0x756E_6970_6977_6870  # pg advisory lock: one emitter at a time across workers


def emit_progress_events(session_factory: sessionmaker[Session], now: datetime, interval_seconds: float,
                         limit: int = 500) -> int:
    """Write due `job.progress` events; returns how many were written."""
    written = 0
    with write_session(session_factory) as session:
        if not _take_emitter_lock(session):
            return 0
        jobs = session.scalars(
            select(Job).where(Job.status == "running", Job.progress_total.is_not(None)).limit(limit)
        ).all()
        outbox = OutboxWriter(session)
        for job in jobs:
            if job.webhook_url and PROGRESS_EVENT not in (job.webhook_events or []):
                continue  # its own webhook does not subscribe (the common case: no query needed)
            if not _due(session, job, now, interval_seconds):
                continue
            row = outbox.job_event(job, PROGRESS_EVENT, now)
            if row is None:
                continue
            data = dict(row.payload["data"])
            data["progress"] = {"step": job.progress_step or 0, "total": job.progress_total}
            row.payload = {**row.payload, "data": data}
            written += 1
            log.debug("job %s progress event %s step %s/%s", job.id, row.id, job.progress_step, job.progress_total)
    return written


def _due(session: Session, job: Job, now: datetime, interval_seconds: float) -> bool:
    last = session.execute(
        select(WebhookEvent.created_at, WebhookEvent.payload)
        .where(WebhookEvent.job_id == job.id, WebhookEvent.event_type == PROGRESS_EVENT)
        .order_by(WebhookEvent.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return bool(job.progress_step)
    created_at, payload = last
    last_step = (((payload or {}).get("data") or {}).get("progress") or {}).get("step")
    return last_step != job.progress_step and created_at + timedelta(seconds=interval_seconds) <= now


def _take_emitter_lock(session: Session) -> bool:
    if is_sqlite(session.get_bind()):  # type: ignore[arg-type]
        return True  # BEGIN IMMEDIATE already serializes writers
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": _EMITTER_LOCK_ID}))
