"""The `fair_share` rows: per (queue, API key) virtual time, activated, charged and forgotten.

Owns every write to the `fair_share` table (the policy that reads it is `storage.scheduling.policy`). A row exists while
its key has queued work in its queue: it is *activated* in the transaction that makes a job queued (create,
release, requeue), *charged* in the claim transaction, and *forgotten* (deleted) once a claim finds the key with
nothing queued there, so idle keys never slow a claim down.

An activated row starts at the queue's current minimum virtual time (or keeps its own if that is higher): a key
that was idle cannot bank credit. Lock discipline (no deadlocks, no lost rows):
- activation is an upsert whose `ON CONFLICT DO UPDATE ... WHERE` locks an existing row even when it leaves it
  unchanged, so it waits for a concurrent `forget` that holds the row and then re-inserts it;
- charges lock rows in (queue, owner) order and are the last statements of a claim;
- `forget` runs in its own short transaction, takes the row with SKIP LOCKED, and re-checks, in a statement that
  starts after the lock is held, that no queued job of the key exists in the queue before deleting.
Knows nothing of jobs' states beyond "queued", of claims or of HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, select, update
from sqlalchemy.orm import Session

from storage import dialect
from storage.tables import ApiKey, FairShare, Job, utcnow


def floor_vtime(s: Session, queue: str) -> float:
    """The least virtual time among the queue's active keys (0 when none): where a (re)activated key starts."""
    return float(s.scalar(select(func.min(FairShare.vtime)).where(FairShare.queue == queue)) or 0.0)


def activate(s: Session, pairs: Iterable[tuple[str, str]], now: datetime | None = None) -> None:
    """Make sure each (queue, owner_id) has a row, at least at its queue's current minimum virtual time."""
    now = now or utcnow()
    for queue, owner_id in sorted(set(pairs)):
        s.execute(_upsert(s, queue, owner_id, now))


def _upsert(s: Session, queue: str, owner_id: str, now: datetime) -> Any:
    """One statement: insert at the queue's floor (a scalar subquery), or lift an existing row to it."""
    floor = select(func.coalesce(func.min(FairShare.vtime), 0.0)).where(FairShare.queue == queue).scalar_subquery()
    stmt = dialect.insert(s, FairShare).values(queue=queue, owner_id=owner_id, vtime=floor, served_jobs=0,
                                               served_work=0.0, updated_at=now)
    return stmt.on_conflict_do_update(
        index_elements=[FairShare.queue, FairShare.owner_id],
        set_={"vtime": stmt.excluded.vtime, "updated_at": now},
        where=FairShare.vtime < stmt.excluded.vtime,
    )


def weights(s: Session, owner_ids: Iterable[str]) -> dict[str, float]:
    """Each key's fair-share weight (1.0 for a key that is not found)."""
    ids = sorted(set(owner_ids))
    found = dict(s.execute(select(ApiKey.id, ApiKey.weight).where(ApiKey.id.in_(ids))).tuples().all())
    return {i: float(found.get(i) or 1.0) for i in ids}


def charge(s: Session, queue: str, served: Mapping[str, tuple[int, float]], now: datetime | None = None,
           weight_of: Mapping[str, float] | None = None) -> None:
    """Advance each key's virtual time by the work it was just served divided by its weight, and count it.
    `served` maps owner_id -> (jobs, work); `weight_of` saves the weight lookup when the caller knows them.
    Rows are locked in owner order first (one statement), then updated; a missing row is activated."""
    now = now or utcnow()
    known = dict(weight_of or {})
    missing = [o for o in served if o not in known]
    if missing:
        known.update(weights(s, missing))
    owners = sorted(served)
    present = set(s.scalars(select(FairShare.owner_id)
                            .where(FairShare.queue == queue, FairShare.owner_id.in_(owners))
                            .order_by(FairShare.owner_id).with_for_update()))
    if len(present) < len(owners):
        activate(s, [(queue, o) for o in owners if o not in present], now)
    delta = {o: served[o][1] / known[o] for o in owners}
    s.execute(update(FairShare).where(FairShare.queue == queue, FairShare.owner_id.in_(owners))
              .values(vtime=FairShare.vtime + case(delta, value=FairShare.owner_id),
                      served_jobs=FairShare.served_jobs + case({o: served[o][0] for o in owners},
                                                               value=FairShare.owner_id),
                      served_work=FairShare.served_work + case({o: served[o][1] for o in owners},
                                                               value=FairShare.owner_id),
                      updated_at=now)
              .execution_options(synchronize_session=False))


def forget(s: Session, queue: str, owner_ids: Iterable[str]) -> list[str]:
    """Delete the rows of keys with no queued job left in `queue`; a row someone holds is left for later.
    Returns the owners forgotten. Run it in a transaction of its own (see the module docstring)."""
    gone = []
    for owner_id in sorted(set(owner_ids)):
        held = s.scalar(select(FairShare.owner_id)
                        .where(FairShare.queue == queue, FairShare.owner_id == owner_id)
                        .with_for_update(skip_locked=True))
        if held is None:
            continue
        queued = s.scalar(select(exists().where(Job.queue == queue, Job.owner_id == owner_id,
                                                Job.status == "queued")))
        if not queued:
            s.execute(delete(FairShare).where(FairShare.queue == queue, FairShare.owner_id == owner_id))
            gone.append(owner_id)
    return gone

