"""The scheduling policy, in one place: which queued jobs of a queue the next claim takes.

A Celery message is only a wake-up for its queue Q: the worker's claim (`JobStore.claim_next`) takes, in one
transaction, the best queued jobs *of Q* under this policy, whether or not the message's own job is among them.
Queue positions and start estimates (`storage.queue_estimates`) simulate the same policy.

1. **Fair share across API keys, per queue.** Each key with queued work in Q has a virtual time (`fair_share`
   row, see `storage.fair_share`). The claim serves the key with the least virtual time, and advances it by
   `work / weight` for every job it takes. `work` is `work_of`: megapixel-steps (width x height x images x
   steps / 1e6) for generate and edit, size^2 x max_new_tokens / UNDERSTAND_TOKENS_PER_STEP / 1e6 for understand.
   `api_keys.weight` (default 1, set with `unipic keys set-weight`) scales a key's share: under saturation two
   keys with weights 2 and 1 are served work in the ratio 2:1. A key that becomes active (its first queued job
   in Q arrives, or a job of it is handed back) starts at the current minimum virtual time of Q's active keys,
   so it cannot bank credit while idle; a key that runs dry is forgotten at the next claim that finds it empty.
2. **Within a key:** higher `priority` first, then oldest (`created_at`, then id). Priority never moves a key
   ahead of other keys: fairness is between keys, priority inside one key. Single jobs default to priority
   SINGLE_DEFAULT_PRIORITY (0), batch items to BATCH_DEFAULT_PRIORITY (-10), so a key's interactive calls go
   before its own bulk.
3. **Batch fill:** after the first job, the claim adds queued jobs of Q with the same compatibility key in
   weighted-fair order (each job's finish tag is its key's virtual time plus the work of that key's jobs up to
   and including it, divided by the key's weight; ties by priority and age), within the worker's item and pixel
   budgets. Each job is charged to its own key. The fill looks at the `free slots + 1` least-served keys (at most
   MAX_FILL_KEYS), one indexed probe each.
4. **Liveness:** every message claims at least one job while Q has a claimable one: rows locked by someone else
   are skipped (SKIP LOCKED) while looking by policy, and when that finds nothing the claim takes any claimable
   job of Q, waiting for row locks if it must (short: the API stamping `last_enqueued_at`, another claim).

Concurrent claims read virtual times without locking them, so with N workers a key may be served up to N times
in a row before its advanced time is seen; the long-run shares still follow the weights. SQLite (embedded mode)
runs the same code: `BEGIN IMMEDIATE` serializes claims and SKIP LOCKED is a no-op there.
Knows nothing of leases, webhooks or HTTP; it selects and locks rows, and `JobStore` moves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select, true
from sqlalchemy.orm import Session

from storage.fair_share import floor_vtime, weights
from storage.tables import ApiKey, FairShare, Job

SINGLE_DEFAULT_PRIORITY = 0
BATCH_DEFAULT_PRIORITY = -10
UNDERSTAND_TOKENS_PER_STEP = 8  # one generated token costs about 1/8 of a sampling step over the same image
KEYS_PER_PAGE = 32
MAX_FILL_KEYS = 32
WAIT_ATTEMPTS = 3


def work_of(kind: str, params: dict[str, Any], pixels: int) -> float:
    """The work a job is charged for, in megapixel-steps (see the module docstring)."""
    if kind == "understand":
        return pixels * int(params.get("max_new_tokens") or 1) / UNDERSTAND_TOKENS_PER_STEP / 1e6
    return pixels * int(params.get("steps") or 1) / 1e6


def job_work(row: Job) -> float:
    return work_of(row.kind, row.params, row.pixels)


@dataclass(frozen=True)
class KeyShare:
    """One active key of a queue as the policy sees it."""

    owner_id: str
    vtime: float
    weight: float


@dataclass
class Pick:
    """A claim's choice: the locked rows in policy order, and keys found with nothing queued (to forget)."""

    rows: list[Job] = field(default_factory=list)
    idle_owners: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # of the keys seen, for the charge


def claimable(queue: str, now: datetime) -> list[ColumnElement[bool]]:
    """The conditions a job must meet to be claimed from `queue` now."""
    return [Job.queue == queue, Job.status == "queued", or_(Job.deadline_at.is_(None), Job.deadline_at > now)]


def within_key() -> tuple[Any, ...]:
    """Policy order inside one key: priority desc, then oldest."""
    return (Job.priority.desc(), Job.created_at, Job.id)


def active_keys(s: Session, queue: str, limit: int | None = None) -> Iterator[KeyShare]:
    """Q's active keys, least virtual time first (paged, so a claim reads only as many as it needs)."""
    offset = 0
    while limit is None or offset < limit:
        size = KEYS_PER_PAGE if limit is None else min(KEYS_PER_PAGE, limit - offset)
        stmt = (select(FairShare.owner_id, FairShare.vtime, func.coalesce(ApiKey.weight, 1.0))
                .outerjoin(ApiKey, ApiKey.id == FairShare.owner_id)
                .where(FairShare.queue == queue)
                .order_by(FairShare.vtime, FairShare.served_jobs, FairShare.owner_id).offset(offset).limit(size))
        page = s.execute(stmt).tuples().all()
        for owner_id, vtime, weight in page:
            yield KeyShare(owner_id, float(vtime), float(weight))
        if len(page) < size:
            return
        offset += size


def pick(s: Session, queue: str, now: datetime, max_items: int, max_pixels: int) -> Pick:
    """Choose and lock (FOR UPDATE SKIP LOCKED) the next batch of `queue` under the policy."""
    result = Pick()
    seed, key = _seed_by_policy(s, queue, now, result.idle_owners)
    if seed is None:
        seed = _any_claimable(s, queue, now)
        if seed is None:
            return result
        key = _share_of(s, queue, seed.owner_id)
    assert key is not None
    result.rows = [seed]
    result.weights[key.owner_id] = key.weight
    if max_items > 1:
        result.rows += _fill(s, queue, seed, key, now, max_items - 1, max_pixels - seed.pixels, result.weights,
                             result.idle_owners)
    return result


def _seed_by_policy(s: Session, queue: str, now: datetime,
                    idle: list[str]) -> tuple[Job | None, KeyShare | None]:
    for key in active_keys(s, queue):
        row = s.scalars(select(Job).where(*claimable(queue, now), Job.owner_id == key.owner_id)
                        .order_by(*within_key()).limit(1).with_for_update(skip_locked=True)).first()
        if row is not None:
            return row, key
        if not s.scalar(select(exists().where(Job.queue == queue, Job.owner_id == key.owner_id,
                                              Job.status == "queued"))):
            idle.append(key.owner_id)
    return None, None


def _any_claimable(s: Session, queue: str, now: datetime) -> Job | None:
    """Liveness fallback: any claimable job of `queue` (a key without a row, or all rows briefly locked); the
    second form waits for locks, and Postgres re-checks `status` once the lock is ours."""
    stmt = select(Job).where(*claimable(queue, now)).limit(1)
    row = s.scalars(stmt.with_for_update(skip_locked=True)).first()
    for _ in range(WAIT_ATTEMPTS):
        if row is not None:
            return row
        row = s.scalars(stmt.with_for_update()).first()
    return row


def _share_of(s: Session, queue: str, owner_id: str) -> KeyShare:
    vtime = s.scalar(select(FairShare.vtime).where(FairShare.queue == queue, FairShare.owner_id == owner_id))
    weight = weights(s, [owner_id])[owner_id]
    return KeyShare(owner_id, float(vtime) if vtime is not None else floor_vtime(s, queue), weight)


@dataclass(frozen=True)
class _Candidate:
    """A compatible queued job seen (unlocked) while filling: enough to tag and choose it."""

    id: str
    owner_id: str
    priority: int
    created_at: datetime
    pixels: int
    work: float


def _fill(s: Session, queue: str, seed: Job, seed_key: KeyShare, now: datetime, slots: int,
          budget: int, weights_seen: dict[str, float], idle: list[str]) -> list[Job]:
    """Compatible jobs in weighted-fair order (finish tags), then locked with SKIP LOCKED."""
    tagged: list[tuple[float, int, datetime, _Candidate]] = []
    for key, rows in _candidates(s, queue, seed, seed_key, now, slots, idle):
        weights_seen[key.owner_id] = key.weight
        tag = key.vtime + (job_work(seed) / key.weight if key.owner_id == seed.owner_id else 0.0)
        for row in rows:
            tag += row.work / key.weight
            tagged.append((tag, -row.priority, row.created_at, row))
    tagged.sort(key=lambda t: t[:3])
    chosen: list[str] = []
    for *_, row in tagged:
        if len(chosen) >= slots:
            break
        if row.pixels <= budget:
            chosen.append(row.id)
            budget -= row.pixels
    if not chosen:
        return []
    locked = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_(chosen), Job.status == "queued")
                                        .with_for_update(skip_locked=True))}
    return [locked[i] for i in chosen if i in locked]


def _candidates(s: Session, queue: str, seed: Job, seed_key: KeyShare, now: datetime, slots: int,
                idle: list[str]) -> list[tuple[KeyShare, list[_Candidate]]]:
    """Up to `slots` compatible queued jobs (policy order) of the seed's key and of each of the `slots` other
    least-served keys that have queued work (keys the seeding just found idle are skipped: their rows are only
    forgotten after this transaction). Postgres: one query (LATERAL, one index probe per key); SQLite: one small
    query per key."""
    n_keys = min(MAX_FILL_KEYS, slots + 1)  # more keys than free slots cannot all get one
    keys = {k.owner_id: k for k in active_keys(s, queue, n_keys)} if s.get_bind().dialect.name != \
        "postgresql" else {}
    wanted = [Job.id, Job.owner_id, Job.priority, Job.created_at, Job.pixels, Job.kind, Job.params]
    compatible = [*claimable(queue, now), Job.compat_key == seed.compat_key, Job.id != seed.id]
    by_owner: dict[str, list[_Candidate]] = {}
    if s.get_bind().dialect.name == "postgresql":
        fs = (select(FairShare.owner_id, FairShare.vtime, func.coalesce(ApiKey.weight, 1.0).label("weight"))
              .outerjoin(ApiKey, ApiKey.id == FairShare.owner_id)
              .where(FairShare.queue == queue, FairShare.owner_id.not_in([seed.owner_id, *idle]))
              .order_by(FairShare.vtime, FairShare.served_jobs, FairShare.owner_id).limit(n_keys - 1)
              .subquery("fs"))
        per_key = (select(*wanted).where(*compatible, Job.owner_id == fs.c.owner_id)
                   .order_by(*within_key()).limit(slots).lateral("j"))
        stmt = select(fs.c.vtime, fs.c.weight, per_key).select_from(fs.join(per_key, true()))
        for vtime, weight, *row in s.execute(stmt).tuples():
            keys.setdefault(row[1], KeyShare(row[1], float(vtime), float(weight)))
            by_owner.setdefault(row[1], []).append(_candidate(row))
        keys.setdefault(seed_key.owner_id, seed_key)
        own = s.execute(select(*wanted).where(*compatible, Job.owner_id == seed.owner_id)
                        .order_by(*within_key()).limit(slots)).tuples()
        by_owner[seed.owner_id] = [_candidate(r) for r in own]
    else:
        keys.setdefault(seed_key.owner_id, seed_key)
        for owner_id in keys:
            rows = s.execute(select(*wanted).where(*compatible, Job.owner_id == owner_id)
                             .order_by(*within_key()).limit(slots)).tuples()
            by_owner[owner_id] = [_candidate(r) for r in rows]
    return [(keys[o], by_owner.get(o, [])) for o in keys]


def _candidate(row: Any) -> _Candidate:
    job_id, owner_id, priority, created_at, pixels, kind, params = row
    return _Candidate(job_id, owner_id, priority, created_at, pixels, work_of(kind, params, pixels))
