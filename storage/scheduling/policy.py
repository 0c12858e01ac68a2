"""The scheduling policy, in one place: which queued jobs of a queue the next claim takes.

A Celery message is only a wake-up for its queue Q: the worker's claim (`JobStore.claim_next`) takes, in one
transaction, the best queued jobs *of Q* under this policy, whether or not the message's own job is among them.
The policy is one function, `service_order`: the order in which claims of one job each would serve Q's queued
jobs. A claim takes its head (and its batch-mates further along it); queue positions and start estimates
(`storage.scheduling.snapshot`) enumerate the same function over the same rows, so they agree by construction.

1. **Fair share across API keys, per queue.** Each key with queued work in Q has a virtual time (`fair_share`
   row, see `storage.scheduling.fair_share`). The claim serves the key with the least virtual time, and advances it by
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
   Served one job at a time, a key's k-th next job is served when its virtual time, advanced by the work of
   the jobs before it, is the least (ties: fewer jobs served, then key id): `KeyShare.rank`, `KeyShare.charged`.
3. **Batch fill:** after the first job, the claim adds queued jobs of Q with the same compatibility key in
   `service_order` (the seed's key already charged for the seed), skipping the incompatible ones, within the
   worker's item and pixel budgets. Each job is charged to its own key. The fill looks at the seed's own key
   and the `free slots` other least-served keys (at most MAX_FILL_KEYS in all), one indexed probe each.
4. **Models:** a queue holds one model's jobs (`storage.routing`: the queue name carries the model), and
   `claimable` also requires the job's model to be the queue's, so a worker (which reads only its own model's
   queues) never claims another model's job; fair share, positions and estimates are per queue, so per model.
5. **Passing over keys:** a running set that is full asks for one job of a key it holds nothing of, or of a key it
   holds above every priority it holds of that key (`workers.runner.continuous`: a key's interactive job beside its
   own bulk): `pick(..., above={key: priority})` serves the policy's order with only those keys' jobs above those
   priorities, and rather than fall back to scanning their backlog, it waits only for the locked head of a key
   it may take (`_wait_for_locked_head`: a job whose wake-up came while the API was still stamping it).
6. **Liveness:** every message claims at least one job while Q has a claimable one: rows locked by someone else
   are skipped (SKIP LOCKED) while looking by policy, and when that finds nothing the claim takes any claimable
   job of Q, waiting for row locks if it must (short: the API stamping `last_enqueued_at`, another claim), one
   row at a time and holding no other while it waits, so claims never wait on each other in a cycle.

Concurrent claims read virtual times without locking them, so with N workers a key may be served up to N times
in a row before its advanced time is seen; the long-run shares still follow the weights. SQLite (embedded mode)
runs the same code (`storage.dialect`): `BEGIN IMMEDIATE` serializes claims and SKIP LOCKED is a no-op there.
Knows nothing of leases, webhooks or HTTP; it selects and locks rows, and `JobStore` moves them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from storage import dialect
from storage.routing import model_of_queue
from storage.scheduling.fair_share import floor_vtime, weights
from storage.tables import ApiKey, FairShare, Job

SINGLE_DEFAULT_PRIORITY = 0
BATCH_DEFAULT_PRIORITY = -10
UNDERSTAND_TOKENS_PER_STEP = 8  # one generated token costs about 1/8 of a sampling step over the same image
KEYS_PER_PAGE = 32
MAX_FILL_KEYS = 32

J = TypeVar("J")
Rank = tuple[float, int, str]


def work_of(kind: str, params: dict[str, Any], pixels: int) -> float:
    """The work a job is charged for, in megapixel-steps (see the module docstring)."""
    if kind == "understand":
        return pixels * int(params.get("max_new_tokens") or 1) / UNDERSTAND_TOKENS_PER_STEP / 1e6
    return pixels * int(params.get("steps") or 1) / 1e6


def job_work(row: Job) -> float:
    return work_of(row.kind, row.params, row.pixels)


@dataclass(frozen=True)
class KeyShare:
    """One active key of a queue as the policy sees it (its `fair_share` row and weight)."""

    owner_id: str
    vtime: float
    weight: float
    served: int = 0  # jobs served so far: the first tie-break

    @property
    def rank(self) -> Rank:
        """Which key is served next: the least rank (`key_order()` in SQL)."""
        return (self.vtime, self.served, self.owner_id)

    def charged(self, work: float) -> KeyShare:
        """The key once it was served one job of `work` (what `fair_share.charge` writes)."""
        return replace(self, vtime=self.vtime + work / self.weight, served=self.served + 1)


def key_order() -> tuple[Any, ...]:
    """`KeyShare.rank` as SQL over `fair_share`: least virtual time, then fewest served, then id."""
    return (FairShare.vtime, FairShare.served_jobs, FairShare.owner_id)


def within_key() -> tuple[Any, ...]:
    """Policy order inside one key: priority desc, then oldest (`within_key_of` in Python)."""
    return (Job.priority.desc(), Job.created_at, Job.id)


def within_key_of(priority: int, created_at: datetime, job_id: str) -> tuple[Any, ...]:
    """`within_key()` as a Python sort key."""
    return (-priority, created_at, job_id)


def claimable(queue: str, now: datetime) -> list[ColumnElement[bool]]:
    """The conditions a job must meet to be claimed from `queue` now: queued there, not past its deadline, and of
    the model the queue holds (`storage.routing.model_of_queue`), so a claim never takes another model's job
    whatever woke it. Claims, positions and estimates all select through this."""
    model = model_of_queue(queue)
    return [Job.queue == queue, Job.status == "queued", or_(Job.deadline_at.is_(None), Job.deadline_at > now),
            Job.model.is_(None) if model is None else Job.model == model]


def worth_claiming(queue: Any) -> ColumnElement[bool]:
    """Whether a claim of `queue` (a column or a value) could do anything: take a queued job there, or forget a key's
    fair-share row there (a claim that finds a key idle forgets it; a row left behind would let that key bank
    credit against the others when it comes back, see `fair_share`). False once the queue is empty and tidied:
    the Celery messages a continuous loop's bulk left behind (each job keeps its message after the loop took it
    in passing) are then one read each instead of a claim transaction."""
    return or_(exists().where(_QUEUED_JOB.queue == queue, _QUEUED_JOB.status == "queued"),
               exists().where(FairShare.queue == queue))


# the jobs table again, for `worth_claiming` beside a read of `Job` itself: made once, as aliasing the table's
# 46 columns cost 1.2 ms of CPU and left ~230 objects of cyclic garbage at every claim (the worker's full collections)
_QUEUED_JOB = aliased(Job, name="queued_job")


def service_order(keys: Iterable[KeyShare], jobs_of: Callable[[KeyShare], Iterable[J]],
                  work: Callable[[J], float]) -> Iterator[tuple[KeyShare, J]]:
    """THE policy: the order in which claims of one job each serve a queue, each job with its key as it
    stands when served (its rank then). `keys` come in rank order (as `active_keys` reads them); `jobs_of(key)`
    gives a key's jobs in `within_key` order and is called lazily, once per key, only when that key could be
    next; keys without jobs are passed over. A claim takes the head, positions enumerate it."""
    upcoming = iter(keys)
    waiting = next(upcoming, None)
    heap: list[tuple[Rank, KeyShare, J, Iterator[J]]] = []
    while True:
        while waiting is not None and (not heap or waiting.rank < heap[0][0]):
            jobs = iter(jobs_of(waiting))
            for first in jobs:
                heapq.heappush(heap, (waiting.rank, waiting, first, jobs))
                break
            waiting = next(upcoming, None)
        if not heap:
            return
        _, key, job, jobs = heapq.heappop(heap)
        yield key, job
        key = key.charged(work(job))
        for following in jobs:
            heapq.heappush(heap, (key.rank, key, following, jobs))
            break


def active_keys(s: Session, queue: str, limit: int | None = None) -> Iterator[KeyShare]:
    """Q's active keys in rank order (paged, so a claim reads only as many as it needs)."""
    offset = 0
    while limit is None or offset < limit:
        size = KEYS_PER_PAGE if limit is None else min(KEYS_PER_PAGE, limit - offset)
        stmt = _keys(queue).offset(offset).limit(size)
        page = s.execute(stmt).tuples().all()
        for owner_id, vtime, served, weight in page:
            yield KeyShare(owner_id, float(vtime), float(weight), int(served))
        if len(page) < size:
            return
        offset += size


def _keys(queue: str, skip: Iterable[str] = ()) -> Any:
    """Q's fair-share rows with their weights, in rank order."""
    stmt = (select(FairShare.owner_id, FairShare.vtime, FairShare.served_jobs,
                   func.coalesce(ApiKey.weight, 1.0).label("weight"))
            .outerjoin(ApiKey, ApiKey.id == FairShare.owner_id).where(FairShare.queue == queue))
    skipped = list(skip)
    if skipped:
        stmt = stmt.where(FairShare.owner_id.not_in(skipped))
    return stmt.order_by(*key_order())


@dataclass
class Pick:
    """A claim's choice: the locked rows in policy order, and keys found with nothing queued (to forget)."""

    rows: list[Job] = field(default_factory=list)
    idle_owners: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # of the keys seen, for the charge


def pick(s: Session, queue: str, now: datetime, max_items: int, max_pixels: int,
         above: Mapping[str, int] | None = None) -> Pick:
    """Choose and lock (FOR UPDATE SKIP LOCKED) the next batch of `queue` under the policy, passing over the jobs
    of the keys in `above` of that priority or lower (a running set looking for a newcomer:
    `workers.runner.continuous`)."""
    result = Pick()
    above = above or {}
    dialect.read_in_index_order(s)
    locked: list[tuple[KeyShare, list[ColumnElement[bool]]]] = []
    seed, key = _seed_by_policy(s, queue, now, result.idle_owners, above, locked)
    if seed is None and above:
        # no scan of the queue (it would read the passed keys' whole backlog; a key is active from its first
        # queued job, fair_share.activate, so every key it may take was probed): a locked head is waited for
        seed, key = _wait_for_locked_head(s, locked)
        if seed is None:
            return result
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
                             [*result.idle_owners, *above])
    return result


def _seed_by_policy(s: Session, queue: str, now: datetime, idle: list[str], above: Mapping[str, int],
                    locked: list[tuple[KeyShare, list[ColumnElement[bool]]]],
                    ) -> tuple[Job | None, KeyShare | None]:
    """The head of `service_order`, its row locked: each key's best claimable job (above its priority in `above`)
    is probed (SKIP LOCKED) in rank order until one is found; keys with nothing queued on the way are noted in
    `idle`, and in `locked` the keys whose probe found nothing while they have queued jobs, in rank order,
    each with its probe's conditions (their head may be locked by someone else: `_wait_for_locked_head`)."""

    def head(key: KeyShare) -> list[Job]:
        conditions = [*claimable(queue, now), Job.owner_id == key.owner_id]
        if key.owner_id in above:
            conditions.append(Job.priority > above[key.owner_id])
        row = s.scalars(select(Job).where(*conditions)
                        .order_by(*within_key()).limit(1).with_for_update(skip_locked=True)).first()
        if row is None:
            if not s.scalar(select(exists().where(Job.queue == queue, Job.owner_id == key.owner_id,
                                                  Job.status == "queued"))):
                idle.append(key.owner_id)
            else:
                locked.append((key, conditions))
        return [] if row is None else [row]

    for key, row in service_order(active_keys(s, queue), head, job_work):
        return row, key
    return None, None


def _wait_for_locked_head(s: Session, locked: list[tuple[KeyShare, list[ColumnElement[bool]]]],
                          ) -> tuple[Job | None, KeyShare | None]:
    """A newcomer claim's liveness (`pick` with `above`): its probes skip locked rows, and a job that has just
    arrived can still be locked when its wake-up is heard, by the API stamping `last_enqueued_at` after sending
    its message (5 of 276 heard newcomer claims in `bench.fairness --b-jobs 300`); skipped, it waited for the next
    wake-up, and as the policy serves a key's oldest job first, so did each of that key's jobs after it until a
    claim of free rows caught up (0.3 s for B's jobs against 0.1 s alone, its p99). So, of the keys whose probe found
    nothing though they have queued jobs, in rank order, the head is read without a lock (only a key that has
    one claimable there costs a wait) and waited for as `_any_claimable` waits: by id, holding no other lock,
    taken only if it still qualifies."""
    for key, conditions in locked:
        held = s.scalar(select(Job.id).where(*conditions).order_by(*within_key()).limit(1))
        if held is None:
            continue
        row = _wait_for(s, held, conditions)
        if row is not None:
            return row, key
    return None, None


def _any_claimable(s: Session, queue: str, now: datetime) -> Job | None:
    """Liveness fallback: any claimable job of `queue` (a key without a row, or all rows briefly locked). While
    claimable rows exist but all are locked, it waits for one of them by id (`_wait_for`) and takes it if it
    still qualifies once the lock is ours; each wait that ends on a row gone from the queue (its holder took or
    canceled it) starts over from a fresh snapshot. It holds no lock while it waits and keeps none it does not
    take, so it cannot close a cycle with other claims: a blocking `FOR UPDATE ... LIMIT 1` over the queue did
    both (Postgres keeps the lock on each row that fails its re-check and scans on to the next locked one)."""
    conditions = claimable(queue, now)
    while True:
        row = s.scalars(select(Job).where(*conditions).limit(1).with_for_update(skip_locked=True)).first()
        if row is not None:
            return row
        held = s.scalar(select(Job.id).where(*conditions).limit(1))  # a plain read: it is someone else's lock
        if held is None:
            return None
        row = _wait_for(s, held, conditions)
        if row is not None:
            return row


def _wait_for(s: Session, job_id: str, conditions: list[ColumnElement[bool]]) -> Job | None:
    """Wait for the lock on one job row and return it if it still meets `conditions`. The wait runs in a
    savepoint that is rolled back when the row no longer qualifies: Postgres keeps the lock on a row that fails
    the re-check after the wait, and rolling back releases it."""
    savepoint = s.begin_nested()
    row = s.scalars(select(Job).where(Job.id == job_id, *conditions).with_for_update()).first()
    if row is None:
        savepoint.rollback()
    else:
        savepoint.commit()
    return row


def _share_of(s: Session, queue: str, owner_id: str) -> KeyShare:
    found = s.execute(select(FairShare.vtime, FairShare.served_jobs)
                      .where(FairShare.queue == queue, FairShare.owner_id == owner_id)).first()
    weight = weights(s, [owner_id])[owner_id]
    if found is None:
        return KeyShare(owner_id, floor_vtime(s, queue), weight)
    return KeyShare(owner_id, float(found.vtime), weight, int(found.served_jobs))


@dataclass(frozen=True)
class _Candidate:
    """A compatible queued job seen (unlocked) while filling: enough to order and choose it."""

    id: str
    owner_id: str
    order: tuple[Any, ...]  # within_key_of
    pixels: int
    work: float


def _fill(s: Session, queue: str, seed: Job, seed_key: KeyShare, now: datetime, slots: int,
          budget: int, weights_seen: dict[str, float], idle: list[str]) -> list[Job]:
    """Compatible jobs in `service_order` after the seed, then locked with SKIP LOCKED (none of `idle`'s keys)."""
    keys, by_owner = _candidates(s, queue, seed, seed_key.charged(job_work(seed)), now, slots, idle)
    chosen: list[str] = []
    for key, row in service_order(keys, lambda k: by_owner.get(k.owner_id, []), lambda c: c.work):
        if len(chosen) >= slots:
            break
        if row.pixels <= budget:
            weights_seen[key.owner_id] = key.weight
            chosen.append(row.id)
            budget -= row.pixels
    if not chosen:
        return []
    locked = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_(chosen), Job.status == "queued")
                                        .with_for_update(skip_locked=True))}
    return [locked[i] for i in chosen if i in locked]


def _candidates(s: Session, queue: str, seed: Job, seed_key: KeyShare, now: datetime, slots: int,
                idle: list[str]) -> tuple[list[KeyShare], dict[str, list[_Candidate]]]:
    """The keys to fill from, in rank order, and up to `slots` compatible queued jobs (policy order) of each:
    the seed's own key and the `slots` other least-served keys that have queued work (keys the seeding just
    found idle are skipped: their rows are only forgotten after this transaction). One statement for the other
    keys (`dialect.rows_per_group`) and one for the seed's key."""
    wanted = (Job.id, Job.owner_id, Job.priority, Job.created_at, Job.pixels, Job.kind, Job.params)
    compatible = [*claimable(queue, now), Job.compat_key == seed.compat_key, Job.id != seed.id]

    def of_key(owner_id: Any) -> Any:
        return select(*wanted).where(*compatible, Job.owner_id == owner_id).order_by(*within_key()).limit(slots)

    n_keys = min(MAX_FILL_KEYS, slots + 1)  # more keys than free slots cannot all get one
    others = _keys(queue, [seed.owner_id, *idle]).limit(n_keys - 1).subquery("fs")
    keys = {seed_key.owner_id: seed_key}
    by_owner = {seed_key.owner_id: [_candidate(row) for row in s.execute(of_key(seed.owner_id))]}
    for owner_id, vtime, served, weight, *row in dialect.rows_per_group(s, others, "owner_id", of_key):
        keys.setdefault(owner_id, KeyShare(owner_id, float(vtime), float(weight), int(served)))
        by_owner.setdefault(owner_id, []).append(_candidate(row))
    for rows in by_owner.values():
        rows.sort(key=lambda c: c.order)
    return sorted(keys.values(), key=lambda k: k.rank), by_owner


def _candidate(row: Any) -> _Candidate:
    job_id, owner_id, priority, created_at, pixels, kind, params = row
    return _Candidate(job_id, owner_id, within_key_of(priority, created_at, job_id), pixels,
                      work_of(kind, params, pixels))
