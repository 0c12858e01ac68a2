"""Read-only job queries: lookups, listings, counts, queue positions and the sweeper's stale-message scan.

`JobStore` (storage.jobs.store) inherits these; kept apart so the state machine module holds only transitions.
Nothing here writes a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import NotFound
from storage.records import JobRecord
from storage.scheduling import snapshot as queue_snapshot
from storage.scheduling.estimates import QueueEstimate
from storage.states import ACTIVE_STATUSES, JobStatus
from storage.tables import Job, utcnow


class JobQueries:
    """Reads the `jobs` table; every call opens its own short session."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    # ---- reading --------------------------------------------------------------------------------------------
    def get(self, job_id: str, owner_id: str | None = None) -> JobRecord:
        """The job; `NotFound` if it does not exist or belongs to another owner."""
        with self.sessions() as s:
            row = s.get(Job, job_id)
            if row is None or (owner_id is not None and row.owner_id != owner_id):
                raise NotFound(f"job {job_id} not found")
            return JobRecord.of(row)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """The jobs that exist among `job_ids`, in the order given."""
        ids = list(job_ids)
        with self.sessions() as s:
            rows = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_(ids)))}
            return [JobRecord.of(rows[i]) for i in ids if i in rows]

    def page(
        self, owner_id: str, status: str | None = None, kind: str | None = None, batch_id: str | None = None,
        created_after: datetime | None = None, created_before: datetime | None = None,
        cursor: str | None = None, limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first (created_at, then id: the `(owner_id, created_at)` index). `cursor` is the last id of the
        previous page (an unknown cursor gives an empty page); the next cursor is None at the end."""
        stmt = select(Job).where(Job.owner_id == owner_id)
        for column, value in ((Job.status, status), (Job.kind, kind), (Job.batch_id, batch_id)):
            if value is not None:
                stmt = stmt.where(column == value)
        if created_after is not None:
            stmt = stmt.where(Job.created_at >= created_after)
        if created_before is not None:
            stmt = stmt.where(Job.created_at < created_before)
        stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.sessions() as s:
            if cursor:
                after = s.scalar(select(Job.created_at).where(Job.id == cursor, Job.owner_id == owner_id))
                if after is None:
                    return [], None
                stmt = stmt.where(or_(Job.created_at < after, and_(Job.created_at == after, Job.id < cursor)))
            rows = list(s.scalars(stmt))
        page = [JobRecord.of(r) for r in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    def counts_by_status(self, owner_id: str | None = None) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        stmt = select(Job.status, func.count()).group_by(Job.status)
        if owner_id is not None:
            stmt = stmt.where(Job.owner_id == owner_id)
        counts = dict.fromkeys((status.value for status in JobStatus), 0)
        with self.sessions() as s:
            counts.update({status: n for status, n in s.execute(stmt).all()})
        return counts

    def active_count(self, owner_id: str | None = None) -> int:
        """Queued plus running jobs (quota and backpressure checks)."""
        stmt = select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES))
        if owner_id is not None:
            stmt = stmt.where(Job.owner_id == owner_id)
        with self.sessions() as s:
            return int(s.scalar(stmt) or 0)

    def queue_position(self, job: JobRecord) -> int:
        """How many queued jobs of the same queue the scheduling policy serves before this one (0 = next; 0 if
        not queued). An estimate: see `storage.scheduling.snapshot`."""
        with self.sessions() as s:
            return queue_snapshot.position(s, job)

    def queue_estimate(self, job: JobRecord) -> QueueEstimate:
        """The job's queue position and estimated start time under the scheduling policy."""
        with self.sessions() as s:
            return queue_snapshot.estimate(s, job)

    def batch_finish_estimate(self, batch_id: str) -> datetime | None:
        """When the batch's last job should finish (an estimate; None when unknown or nothing is left)."""
        with self.sessions() as s:
            return queue_snapshot.batch_finish(s, batch_id)

    def cancel_requested_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` whose owner asked to cancel them (the worker drops them between steps)."""
        ids = list(job_ids)
        if not ids:
            return set()
        stmt = select(Job.id).where(Job.id.in_(ids), Job.cancel_requested.is_(True))
        with self.sessions() as s:
            return set(s.scalars(stmt))

    def cancel_requested_of(self, worker_id: str) -> set[str]:
        """The running jobs of `worker_id` whose owner asked to cancel them: what a gateway worker's cancel
        long-poll answers (`api.gateway.routes`), including jobs claimed after the poll began, which the worker
        could not name yet. The partial index `ix_jobs_cancel_requested_by_worker` holds just these rows (the
        clauses are spelled as its predicate, so Postgres proves it applies)."""
        stmt = select(Job.id).where(Job.cancel_requested, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
        with self.sessions() as s:
            return set(s.scalars(stmt))

    def stale_queued(self, older_than_seconds: float, limit: int = 1000, queue: str | None = None) -> list[JobRecord]:
        """Queued jobs (of `queue`, or any) not enqueued for `older_than_seconds` (or never): their message may be
        lost."""
        cutoff = utcnow() - timedelta(seconds=older_than_seconds)
        stmt = (select(Job).where(Job.status == JobStatus.QUEUED, *([Job.queue == queue] if queue else []))
                # a job just created may still be on its way to the broker: judge it by its age until the API
                # has stamped its send, so the sweeper does not race fresh submissions
                .where(func.coalesce(Job.last_enqueued_at, Job.created_at) < cutoff)
                .order_by(Job.priority.desc(), Job.created_at).limit(limit))
        with self.sessions() as s:
            return [JobRecord.of(r) for r in s.scalars(stmt)]
