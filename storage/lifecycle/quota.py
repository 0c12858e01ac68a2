"""The per-key active-job quota, enforced inside the transaction that inserts the jobs.

The API's admission check (api.intake.admission) reads a cached count: cheap, but concurrent requests all see the same
number, so it can let a burst overshoot. `enforce_quotas(session, quotas, added)` is the exact check: called in
the insert's own transaction (`JobStore.create_many(..., quotas=)`), it serializes the inserts of each key
(Postgres: a transaction-scoped advisory lock per key, taken in key order so two groups never deadlock; SQLite:
the insert already holds the database write lock, `BEGIN IMMEDIATE`), counts the key's queued and running jobs
and refuses with `QuotaExceeded` when the new ones would not fit. The lock is released when the transaction ends,
after the rows are visible, so the next insert of that key counts them.
It knows nothing of HTTP or of where a key's quota comes from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from storage import dialect
from storage.errors import StoreError
from storage.states import ACTIVE_STATUSES
from storage.tables import Job

LOCK_NAMESPACE = b"unipic.quota:"
# literal, not bound, so the planner matches the partial index `ix_jobs_active_by_owner` (storage.tables)
ACTIVE = text("status IN (" + ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES) + ")")


class QuotaExceeded(StoreError):
    """The key has as many queued and running jobs as its quota allows."""

    code = "quota_exceeded"


def lock_id(owner_id: str) -> int:
    """A stable signed 64-bit advisory lock id for a key."""
    return int.from_bytes(hashlib.sha256(LOCK_NAMESPACE + owner_id.encode()).digest()[:8], "big", signed=True)


def enforce_quotas(session: Session, quotas: Mapping[str, int], added: Mapping[str, int]) -> None:
    """Raise `QuotaExceeded` if any key in `quotas` would have more than its quota of active jobs once
    `added[key]` more are inserted in this transaction (call before the insert)."""
    for owner_id in sorted(quotas):
        n = added.get(owner_id, 0)
        if n == 0:
            continue
        dialect.lock(session, lock_id(owner_id))
        active = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner_id, ACTIVE)) or 0
        quota = quotas[owner_id]
        if active + n > quota:
            raise QuotaExceeded(f"{active} jobs queued or running; this key may have {quota}",
                                owner_id=owner_id, active=active, quota=quota)
