"""Queue positions and start/finish estimates that follow the scheduling policy (`storage.scheduling`).

These are **estimates**, labelled so in the API. A queued job J of key K in queue Q is ahead of a job of key K'
when the policy would serve it first: K's own queued jobs before J in priority/age order, plus, for every other
active key K', the jobs K' would be served before J's weighted-fair finish tag is reached, assuming K' jobs cost
what J costs (`count = min(queued of K', jobs whose tag is below J's)`). Time comes from throughput measured on
the queue's recent successes (`model_seconds / batch_size`, the model's time per job in the batches actually run)
times the live workers serving Q; with no history or no live worker there is no time estimate.
Reads only: two grouped queries for a position, one for the throughput. Knows nothing of HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from storage.fair_share import floor_vtime, weights
from storage.records import JobRecord
from storage.scheduling import work_of
from storage.states import JobStatus
from storage.tables import FairShare, Job, Worker, utcnow

RECENT_JOBS = 200
RECENT_WINDOW = timedelta(hours=1)
LIVE_WORKER_SECONDS = 120.0


@dataclass(frozen=True)
class QueueEstimate:
    """Where a queued job stands: jobs the policy serves before it, and when it should start (None: unknown)."""

    position: int
    estimated_start_at: datetime | None


def position(s: Session, job: JobRecord) -> int:
    """How many queued jobs of the same queue the policy serves before `job` (0 = next); 0 if not queued."""
    if job.status != JobStatus.QUEUED:
        return 0
    own_ahead = int(s.scalar(select(func.count()).select_from(Job).where(
        Job.queue == job.queue, Job.owner_id == job.owner_id, Job.status == JobStatus.QUEUED, _ahead_of(job),
    )) or 0)
    shares = dict(s.execute(select(FairShare.owner_id, FairShare.vtime)
                            .where(FairShare.queue == job.queue)).tuples().all())
    queued = dict(s.execute(select(Job.owner_id, func.count()).where(Job.queue == job.queue,
                                                                       Job.status == JobStatus.QUEUED)
                            .group_by(Job.owner_id)).tuples().all())
    queued.pop(job.owner_id, None)
    weight_of = weights(s, [job.owner_id, *queued])
    floor = floor_vtime(s, job.queue)
    work = work_of(job.kind, job.params, job.pixels) or 1e-9
    tag = float(shares.get(job.owner_id, floor)) + (own_ahead + 1) * work / weight_of[job.owner_id]
    others = 0
    for owner_id, count in queued.items():
        reach = round((tag - float(shares.get(owner_id, floor))) * weight_of[owner_id] / work, 9)
        others += min(int(count), max(0, math.ceil(reach) - 1))
    return own_ahead + others


def _ahead_of(job: JobRecord) -> ColumnElement[bool]:
    return or_(
        Job.priority > job.priority,
        and_(Job.priority == job.priority, Job.created_at < job.created_at),
        and_(Job.priority == job.priority, Job.created_at == job.created_at, Job.id < job.id),
    )


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


def estimate(s: Session, job: JobRecord, now: datetime | None = None) -> QueueEstimate:
    """`position` plus when the job should start at the measured throughput."""
    now = now or utcnow()
    ahead = position(s, job)
    if job.status != JobStatus.QUEUED:
        return QueueEstimate(ahead, None)
    rate = jobs_per_second(s, job.queue, now)
    return QueueEstimate(ahead, now + timedelta(seconds=ahead / rate) if rate else None)


def batch_finish(s: Session, batch_id: str, now: datetime | None = None) -> datetime | None:
    """When the batch's last job should finish: per queue, the start estimate of its last queued job in policy
    order plus one job's time; running-only batches finish in about one job's time. None: unknown or done."""
    now = now or utcnow()
    queues = s.execute(select(Job.queue, func.count()).where(Job.batch_id == batch_id,
                                                             Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
                       .group_by(Job.queue)).tuples().all()
    finish: datetime | None = None
    for queue, _ in queues:
        rate = jobs_per_second(s, queue, now)
        if not rate:
            return None
        last = s.scalars(select(Job).where(Job.batch_id == batch_id, Job.queue == queue,
                                           Job.status == JobStatus.QUEUED)
                         .order_by(Job.priority, Job.created_at.desc(), Job.id.desc()).limit(1)).first()
        ahead = position(s, JobRecord.of(last)) if last is not None else 0
        at = now + timedelta(seconds=(ahead + 1) / rate)
        finish = at if finish is None or at > finish else finish
    return finish
