"""Finishing a batch when its last job turns terminal, inside the transaction that made it terminal.

The batch row is locked (`FOR UPDATE`) after the job row changed, so of two jobs finishing at once the second
waits, then looks again with a fresh snapshot and sees the first: exactly one transaction finishes the batch and
writes `batch.completed`. Lock order is always job rows first, then the batch row.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.states import ACTIVE_STATUSES, BatchStatus, EventType, JobStatus
from storage.tables import Batch, Job
from storage.webhooks.outbox import OutboxWriter

log = logging.getLogger(__name__)


def batch_counts(s: Session, batch_id: str) -> dict[str, int]:
    """Jobs of a batch per status (all statuses present)."""
    counts = dict.fromkeys((status.value for status in JobStatus), 0)
    stmt = select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    counts.update({status: n for status, n in s.execute(stmt).all()})
    return counts


def finish_batch_if_done(s: Session, outbox: OutboxWriter, batch_id: str | None, now: datetime) -> bool:
    """If every job of the batch is terminal, mark it finished and record `batch.completed`. True if it did."""
    if batch_id is None:
        return False
    batch = s.scalars(
        select(Batch).where(Batch.id == batch_id).with_for_update().execution_options(populate_existing=True)
    ).one()
    if batch.finished_at is not None:
        return False
    # one probe of the (batch_id, status) index, not a count of the whole batch: this runs at every job's finish,
    # under the batch row's lock, and counting a 10,000-job batch each time made finishing it quadratic
    open_job = select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_STATUSES)).limit(1)
    if s.scalars(open_job).first() is not None:
        return False
    counts = batch_counts(s, batch_id)
    batch.status = BatchStatus.CANCELED if batch.canceled_at is not None else BatchStatus.COMPLETED
    batch.finished_at = now
    s.flush()
    outbox.batch_event(batch, EventType.BATCH_COMPLETED, now, counts)
    log.info("batch %s %s: %s", batch_id, batch.status, counts)
    return True
