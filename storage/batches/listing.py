"""Per-status job counts for a page of batches, in one grouped query (the list shows what `get` shows).

Owns only that read; batch rows come from `BatchStore`, the single-batch counts from storage.batches.completion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.records import BatchRecord
from storage.states import JobStatus
from storage.tables import Job


def with_counts(sessions: sessionmaker[Session], batches: Sequence[BatchRecord]) -> list[BatchRecord]:
    """The same batches, each with its jobs' counts per status (every status present)."""
    if not batches:
        return []
    counts = {b.id: dict.fromkeys((status.value for status in JobStatus), 0) for b in batches}
    stmt = (select(Job.batch_id, Job.status, func.count()).where(Job.batch_id.in_(list(counts)))
            .group_by(Job.batch_id, Job.status))
    with sessions() as s:
        for batch_id, status, n in s.execute(stmt):
            counts[str(batch_id)][status] = int(n)
    return [dataclasses.replace(b, counts=counts[b.id]) for b in batches]
