"""Queue positions, derived from the scheduling policy's own order: one read of a queue answers all its jobs.

`take(s, queue)` reads what a claim reads (the queue's claimable jobs, its keys' fair-share rows and weights) and
enumerates `storage.scheduling.policy.service_order` over them: the order in which claims of one job each would serve
the queue, the very function a claim takes its head from. Each key's jobs keep the rank their key had when
served; a job's position is the jobs of its own key before it plus, for every other key, those served at a lower
rank: its index in that order, and for a job newer than the snapshot the index it would have had.
`position`, `estimate` and `batch_finish` read a snapshot for one job or batch; a process answering many jobs
caches snapshots (`api.events.queue_positions`). Times come from `storage.scheduling.estimates`. Estimates (labelled so in
the API): workers that take batches serve a few jobs at once. Reads only; knows nothing of HTTP.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import SessionFactory
from storage.records import JobRecord
from storage.scheduling.estimates import QueueEstimate, after, jobs_per_second
from storage.scheduling.fair_share import floor_vtime, weights
from storage.scheduling.policy import (
    KeyShare,
    Rank,
    active_keys,
    claimable,
    service_order,
    within_key_of,
    work_of,
)
from storage.states import JobStatus
from storage.tables import Job, utcnow


@dataclass(frozen=True)
class _Queued:
    order: tuple[Any, ...]  # within_key_of
    work: float


@dataclass
class _KeyLine:
    """One key's queued jobs in policy order, the rank each is served at, and the key after all of them."""

    share: KeyShare
    order: list[tuple[Any, ...]] = field(default_factory=list)
    ranks: list[Rank] = field(default_factory=list)


@dataclass(frozen=True)
class QueueSnapshot:
    """A queue's service order as of `taken_at`, by key, and its throughput."""

    queue: str
    taken_at: datetime
    lines: dict[str, _KeyLine] = field(default_factory=dict)
    floor: float = 0.0  # where a key with no row starts
    rate: float | None = None

    def position(self, job: JobRecord) -> int:
        """Queued jobs the policy serves before `job` (0 = next); 0 if it is not queued."""
        if job.status != JobStatus.QUEUED:
            return 0
        line = self.lines.get(job.owner_id) or _KeyLine(KeyShare(job.owner_id, self.floor, 1.0))
        own_ahead = bisect.bisect_left(line.order, within_key_of(job.priority, job.created_at, job.id))
        rank = line.ranks[own_ahead] if own_ahead < len(line.ranks) else line.share.rank
        return own_ahead + sum(bisect.bisect_left(other.ranks, rank)
                               for owner_id, other in self.lines.items() if owner_id != job.owner_id)

    def estimate(self, job: JobRecord) -> QueueEstimate:
        """`position` plus when the job should start at the queue's measured throughput."""
        ahead = self.position(job)
        if job.status != JobStatus.QUEUED:
            return QueueEstimate(ahead, None)
        return QueueEstimate(ahead, after(self.taken_at, ahead, self.rate))


def take(s: Session, queue: str, now: datetime | None = None, timed: bool = True) -> QueueSnapshot:
    """Read one queue's snapshot: its keys, one scan of its claimable jobs, and (`timed`) its throughput."""
    now = now or utcnow()
    params = {"steps": Job.params["steps"].as_float(), "max_new_tokens": Job.params["max_new_tokens"].as_float()}
    rows = s.execute(select(Job.owner_id, Job.priority, Job.created_at, Job.id, Job.kind, Job.pixels,
                            *params.values()).where(*claimable(queue, now))).tuples()
    jobs: dict[str, list[_Queued]] = {}
    for owner_id, priority, created_at, job_id, kind, pixels, *values in rows:
        work = work_of(kind, dict(zip(params, values, strict=True)), pixels)
        jobs.setdefault(owner_id, []).append(_Queued(within_key_of(priority, created_at, job_id), work))
    floor = floor_vtime(s, queue)
    lines = {k.owner_id: _KeyLine(k) for k in active_keys(s, queue)}
    rowless = [owner_id for owner_id in jobs if owner_id not in lines]
    for owner_id, weight in weights(s, rowless).items():
        lines[owner_id] = _KeyLine(KeyShare(owner_id, floor, weight))
    for queued in jobs.values():
        queued.sort(key=lambda q: q.order)
    keys = sorted((line.share for line in lines.values()), key=lambda k: k.rank)
    for key, served in service_order(keys, lambda k: jobs.get(k.owner_id, []), lambda q: q.work):
        line = lines[key.owner_id]
        line.order.append(served.order)
        line.ranks.append(key.rank)
        line.share = key.charged(served.work)
    rate = jobs_per_second(s, queue, now) if timed else None
    return QueueSnapshot(queue=queue, taken_at=now, lines=lines, floor=floor, rate=rate)


def read(sessions: SessionFactory, queue: str) -> QueueSnapshot:
    """`take` in a session of its own (`sessions`: a session factory)."""
    with sessions() as s:
        return take(s, queue)


def position(s: Session, job: JobRecord) -> int:
    """How many queued jobs of its queue the policy serves before `job` (0 = next; 0 if not queued)."""
    if job.status != JobStatus.QUEUED:
        return 0
    return take(s, job.queue, timed=False).position(job)


def estimate(s: Session, job: JobRecord, now: datetime | None = None) -> QueueEstimate:
    """`position` plus when the job should start at the measured throughput."""
    if job.status != JobStatus.QUEUED:
        return QueueEstimate(0, None)
    return take(s, job.queue, now).estimate(job)


def batch_finish(s: Session, batch_id: str, now: datetime | None = None) -> datetime | None:
    """When the batch's last job should finish: per queue, the start estimate of its last queued job in policy
    order plus one job's time; running-only batches finish in about one job's time. None: unknown or done."""
    now = now or utcnow()
    queues = s.scalars(select(Job.queue).where(Job.batch_id == batch_id,
                                               Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
                       .group_by(Job.queue)).all()
    finish: datetime | None = None
    for queue in queues:
        rate = jobs_per_second(s, queue, now)
        if not rate:
            return None
        last = s.scalars(select(Job).where(Job.batch_id == batch_id, Job.queue == queue,
                                           Job.status == JobStatus.QUEUED)
                         .order_by(Job.priority, Job.created_at.desc(), Job.id.desc()).limit(1)).first()
        ahead = take(s, queue, now, timed=False).position(JobRecord.of(last)) if last is not None else 0
        at = after(now, ahead + 1, rate)
        finish = at if finish is None or (at is not None and at > finish) else finish
    return finish
