"""One queue's standing in a single read: the queue positions of all its queued jobs, answered from memory.

`storage.queue_estimates.position` counts the queue for one job (four small queries). An API process holding
thousands of event streams must not do that per stream, so `take(s, queue)` reads what the policy needs once
(each queued job's owner and priority/age order, the keys' virtual times, weights and the queue's throughput)
and `QueueSnapshot.estimate(job)` applies the same formula in memory. Who caches snapshots, and for how long, is
the caller's business (`api.queue_positions`). Reads only; knows nothing of HTTP.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import SessionFactory
from storage.fair_share import floor_vtime, weights
from storage.queue_estimates import QueueEstimate, jobs_per_second
from storage.records import JobRecord
from storage.scheduling import work_of
from storage.states import JobStatus
from storage.tables import FairShare, Job, utcnow


def order_key(priority: int, created_at: datetime, job_id: str) -> tuple[Any, ...]:
    """A queued job's place among its key's jobs: priority desc, then oldest, then id."""
    return (-priority, created_at, job_id)


@dataclass(frozen=True)
class QueueSnapshot:
    """What `position` needs, for every queued job of one queue, as of `taken_at`."""

    queue: str
    taken_at: datetime
    own: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # owner -> sorted order keys
    shares: dict[str, float] = field(default_factory=dict)
    weight_of: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0
    rate: float | None = None

    def position(self, job: JobRecord) -> int:
        """Queued jobs the policy serves before `job` (0 = next), as `queue_estimates.position` counts them."""
        if job.status != JobStatus.QUEUED:
            return 0
        mine = self.own.get(job.owner_id, [])
        own_ahead = bisect.bisect_left(mine, order_key(job.priority, job.created_at, job.id))
        work = work_of(job.kind, job.params, job.pixels) or 1e-9
        weight = self.weight_of.get(job.owner_id, 1.0)
        tag = self.shares.get(job.owner_id, self.floor) + (own_ahead + 1) * work / weight
        others = 0
        for owner_id, keys in self.own.items():
            if owner_id == job.owner_id:
                continue
            reach = round((tag - self.shares.get(owner_id, self.floor)) * self.weight_of.get(owner_id, 1.0)
                          / work, 9)
            others += min(len(keys), max(0, math.ceil(reach) - 1))
        return own_ahead + others

    def estimate(self, job: JobRecord) -> QueueEstimate:
        """`position` plus when the job should start at the queue's measured throughput."""
        ahead = self.position(job)
        if job.status != JobStatus.QUEUED or not self.rate:
            return QueueEstimate(ahead, None)
        return QueueEstimate(ahead, self.taken_at + timedelta(seconds=ahead / self.rate))


def take(s: Session, queue: str, now: datetime | None = None) -> QueueSnapshot:
    """Read one queue's snapshot: three small queries plus one scan of its queued jobs' order columns."""
    now = now or utcnow()
    rows = s.execute(select(Job.owner_id, Job.priority, Job.created_at, Job.id)
                     .where(Job.queue == queue, Job.status == JobStatus.QUEUED)).tuples().all()
    own: dict[str, list[tuple[Any, ...]]] = {}
    for owner_id, priority, created_at, job_id in rows:
        own.setdefault(owner_id, []).append(order_key(priority, created_at, job_id))
    for keys in own.values():
        keys.sort()
    shares = {o: float(v) for o, v in s.execute(select(FairShare.owner_id, FairShare.vtime)
                                                 .where(FairShare.queue == queue)).tuples().all()}
    return QueueSnapshot(queue=queue, taken_at=now, own=own, shares=shares, weight_of=weights(s, own),
                         floor=floor_vtime(s, queue), rate=jobs_per_second(s, queue, now))


def read(sessions: SessionFactory, queue: str) -> QueueSnapshot:
    """`take` in a session of its own (`sessions`: a session factory)."""
    with sessions() as s:
        return take(s, queue)
