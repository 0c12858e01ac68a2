"""When queued work should start: the throughput a queue is measured to have.

Positions come from `storage.scheduling.snapshot` (the scheduling policy's own order); this module turns "n jobs
ahead" into time. These are **estimates**, labelled so in the API: throughput is measured on the queue's recent
successes (`model_seconds / batch_size`, the model's time per job in the batches actually run) times the live
workers serving the queue; with no history or no live worker there is no time estimate.
Reads only: one query for the recent jobs, one for the workers. Knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.states import JobStatus
from storage.tables import Job, Worker, utcnow

RECENT_JOBS = 200
RECENT_WINDOW = timedelta(hours=1)
LIVE_WORKER_SECONDS = 120.0


@dataclass(frozen=True)
class QueueEstimate:
    """Where a queued job stands: jobs the policy serves before it, and when it should start (None: unknown)."""

    position: int
    estimated_start_at: datetime | None


def jobs_per_second(s: Session, queue: str, now: datetime | None = None) -> float | None:
    """The queue's measured throughput: live workers serving it / mean model seconds per job (None: unknown)."""
    now = now or utcnow()
    stmt = (select(Job.model_seconds, Job.batch_size)
            .where(Job.queue == queue, Job.status == JobStatus.SUCCEEDED, Job.finished_at > now - RECENT_WINDOW,
                   Job.model_seconds.is_not(None))
            .order_by(Job.finished_at.desc()).limit(RECENT_JOBS))
    per_job = [float(sec or 0.0) / max(1, int(size or 1)) for sec, size in s.execute(stmt).tuples()]
    workers = _live_workers_serving(s, queue, now)
    if not per_job or workers == 0:
        return None
    mean = sum(per_job) / len(per_job)
    return workers / mean if mean > 0 else None


def _live_workers_serving(s: Session, queue: str, now: datetime) -> int:
    stmt = select(Worker.queues).where(Worker.stopped_at.is_(None),
                                       Worker.last_heartbeat_at >= now - timedelta(seconds=LIVE_WORKER_SECONDS))
    return sum(1 for queues in s.scalars(stmt) if queues is None or queue in queues)


def after(now: datetime, jobs: int, rate: float | None) -> datetime | None:
    """When `jobs` jobs will have been served at `rate` jobs per second from `now` (None: rate unknown)."""
    return now + timedelta(seconds=jobs / rate) if rate else None
