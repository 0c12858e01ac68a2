"""BatchStore: batch rows, their per-status counts, cancellation, and their jobs in submission order.

Batches are created together with their jobs by `JobStore.create_many` (one transaction). Cancelling a batch
is a change of its jobs' states, so it goes through the state machine (`JobStore.cancel_batch`): this module
never writes a job row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from storage.batches.completion import batch_counts
from storage.batches.keys import batch_by_key
from storage.batches.listing import with_counts
from storage.errors import NotFound
from storage.jobs.store import JobStore
from storage.records import BatchRecord, JobRecord
from storage.tables import Batch, Job

log = logging.getLogger(__name__)


class BatchStore:
    """Reads and cancels batches. Every call runs in its own transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory
        self._jobs = JobStore(session_factory)

    def get(self, batch_id: str, owner_id: str | None = None) -> BatchRecord:
        """The batch with its per-status job counts; `NotFound` if missing or another owner's."""
        with self.sessions() as s:
            row = s.get(Batch, batch_id)
            if row is None or (owner_id is not None and row.owner_id != owner_id):
                raise NotFound(f"batch {batch_id} not found")
            return BatchRecord.of(row, batch_counts(s, batch_id))

    def page(self, owner_id: str, cursor: str | None = None,
             limit: int = 50) -> tuple[list[BatchRecord], str | None]:
        """Newest first, without counts (ask `get` for them); cursor = last id of the previous page."""
        stmt = select(Batch).where(Batch.owner_id == owner_id)
        if cursor:
            stmt = stmt.where(Batch.id < cursor)
        with self.sessions() as s:
            rows = list(s.scalars(stmt.order_by(Batch.id.desc()).limit(limit + 1)))
        page = [BatchRecord.of(r) for r in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    def with_counts(self, batches: Sequence[BatchRecord]) -> list[BatchRecord]:
        """The same batches, each with its per-status counts, in one grouped query (storage.batches.listing)."""
        return with_counts(self.sessions, batches)

    def by_key(self, owner_id: str, key: str, request_hash: str) -> BatchRecord | None:
        """The owner's batch made with Idempotency-Key `key`, or None; `IdempotencyConflict` if it was made from
        another request (storage.batches.keys)."""
        return batch_by_key(self.sessions, owner_id, key, request_hash)

    def cancel(self, batch_id: str, owner_id: str | None) -> BatchRecord:
        """Cancel queued jobs now, request cancel of running ones (`JobStore.cancel_batch`); the batch after it.
        `NotFound` if missing or another owner's, `IllegalTransition` if already finished."""
        self._jobs.cancel_batch(batch_id, owner_id)
        return self.get(batch_id)

    def jobs(self, batch_id: str, after: JobRecord | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs of the batch in submission order (for the results manifest, storage.batches.manifests): all of them, or a
        page of `limit` that follow `after`, the last job of the previous page."""
        stmt = select(Job).where(Job.batch_id == batch_id)
        if after is not None:
            stmt = stmt.where(or_(Job.created_at > after.created_at,
                                  and_(Job.created_at == after.created_at, Job.id > after.id)))
        stmt = stmt.order_by(Job.created_at, Job.id).limit(limit)
        with self.sessions() as s:
            return [JobRecord.of(r) for r in s.scalars(stmt)]
