"""BatchStore: batch rows, their per-status counts, cancellation and manifest bookkeeping.

Batches are created together with their jobs by `JobStore.create_many` (one transaction). Cancelling a batch
is a change of its jobs' states, so it goes through the state machine (`JobStore.cancel_batch`): this module
never writes a job row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.batch_completion import batch_counts
from storage.batch_keys import batch_by_key
from storage.batch_listing import with_counts
from storage.db import write_session
from storage.errors import NotFound
from storage.jobs import JobStore
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
        """The same batches, each with its per-status counts, in one grouped query (storage.batch_listing)."""
        return with_counts(self.sessions, batches)

    def by_key(self, owner_id: str, key: str, request_hash: str) -> BatchRecord | None:
        """The owner's batch made with Idempotency-Key `key`, or None; `IdempotencyConflict` if it was made from
        another request (storage.batch_keys)."""
        return batch_by_key(self.sessions, owner_id, key, request_hash)

    def cancel(self, batch_id: str, owner_id: str | None) -> BatchRecord:
        """Cancel queued jobs now, request cancel of running ones (`JobStore.cancel_batch`); the batch after it.
        `NotFound` if missing or another owner's, `IllegalTransition` if already finished."""
        self._jobs.cancel_batch(batch_id, owner_id)
        return self.get(batch_id)

    def jobs(self, batch_id: str) -> list[JobRecord]:
        """Every job of the batch in submission order (for the results manifest)."""
        stmt = select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
        with self.sessions() as s:
            return [JobRecord.of(r) for r in s.scalars(stmt)]

    def set_manifest_key(self, batch_id: str, key: str) -> None:
        """Record that the results manifest was written at `key`."""
        with write_session(self.sessions) as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(manifest_key=key),
                      execution_options={"synchronize_session": False})

    def finished_without_manifest(self, limit: int = 100) -> list[str]:
        """Finished batches whose manifest is not written yet (the sweeper writes them)."""
        stmt = (select(Batch.id).where(Batch.finished_at.is_not(None), Batch.manifest_key.is_(None))
                .order_by(Batch.finished_at).limit(limit))
        with self.sessions() as s:
            return list(s.scalars(stmt))
