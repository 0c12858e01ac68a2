"""The scheduling policy (storage.scheduling.policy) at the store level, on Postgres and SQLite: fair share across keys,
weights, idle keys restarting at the minimum, priority inside a key, batch fill, liveness and exactly-once.

Every test uses a queue of its own, so the policy never sees other tests' jobs in the shared storage schema; the
tests of the planner's choices (Postgres) use a schema of their own, whose statistics they set up.
Claims are driven by loops, never by timing."""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select, text

from storage import dialect
from storage.batches.store import BatchStore
from storage.db import make_engine, make_session_factory
from storage.jobs.store import JobStore
from storage.keys import KeyStore
from storage.migrate import upgrade
from storage.tables import FairShare
from tests.support.storage import Stores, add_owner, job

WORKER = "sched-test"


def _queue() -> str:
    return f"unipic.generate.t{secrets.token_hex(4)}"


def _submit(stores: Stores, owner: str, queue: str, n: int, **kw: Any) -> list[str]:
    _, recs = stores.jobs.create_many([job(owner, queue=queue, **kw) for _ in range(n)])
    return [r.id for r in recs]


def _owners_of_claims(stores: Stores, queue: str, claims_n: int, max_items: int = 1) -> list[str]:
    owners = []
    for _ in range(claims_n):
        claims = stores.jobs.claim_next(queue, WORKER, 60, max_items, 10**9)
        owners.extend(stores.jobs.get(c.job_id).owner_id for c in claims)
    return owners


def _weighted(stores: Stores, weight: float) -> str:
    owner = stores.new_owner()
    KeyStore(stores.sessions).set_weight(owner, weight)
    return owner


def test_a_single_job_of_another_key_goes_next_after_a_bulk_started(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 50, priority=-10)
    assert _owners_of_claims(stores, queue, 1) == [a]
    [b_job] = _submit(stores, b, queue, 1)
    [claim] = stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)
    assert claim.job_id == b_job  # not behind A's remaining 49


def test_weights_two_to_one_give_two_to_one_service_under_saturation(stores: Stores) -> None:
    queue = _queue()
    heavy, light = _weighted(stores, 2.0), _weighted(stores, 1.0)
    _submit(stores, heavy, queue, 100)
    _submit(stores, light, queue, 100)
    served = Counter(_owners_of_claims(stores, queue, 60))
    ratio = served[heavy] / served[light]
    assert 2 * 0.85 <= ratio <= 2 * 1.15, served


def test_weights_hold_with_batches_of_several(stores: Stores) -> None:
    queue = _queue()
    heavy, light = _weighted(stores, 2.0), _weighted(stores, 1.0)
    _submit(stores, heavy, queue, 200)
    _submit(stores, light, queue, 200)
    served = Counter(_owners_of_claims(stores, queue, 30, max_items=4))
    ratio = served[heavy] / served[light]
    assert 2 * 0.85 <= ratio <= 2 * 1.15, served


def test_work_not_job_count_is_shared(stores: Stores) -> None:
    queue = _queue()
    big, small = stores.new_owner(), stores.new_owner()
    _submit(stores, big, queue, 40, size=512, compat="generate:512:8:3.0:constant")  # 4x the pixels
    _submit(stores, small, queue, 100)
    served = Counter(_owners_of_claims(stores, queue, 50))
    assert 4 * 0.85 <= served[small] / served[big] <= 4 * 1.15, served


def test_an_idle_key_cannot_bank_credit(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 40)
    assert _owners_of_claims(stores, queue, 20) == [a] * 20  # B idle meanwhile
    _submit(stores, b, queue, 40)
    served = Counter(_owners_of_claims(stores, queue, 10))
    assert served[b] <= 6, served  # B starts at A's virtual time, not at zero: shares, no catch-up run


def test_a_key_that_went_idle_restarts_at_the_current_minimum(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 2)
    assert _owners_of_claims(stores, queue, 3) == [a, a]  # the third claim finds A dry and forgets it
    with stores.sessions() as s:
        assert s.scalars(select(FairShare.owner_id).where(FairShare.queue == queue)).all() == []
    _submit(stores, b, queue, 30)
    assert _owners_of_claims(stores, queue, 10) == [b] * 10
    _submit(stores, a, queue, 30)
    served = Counter(_owners_of_claims(stores, queue, 10))
    assert 4 <= served[a] <= 6, served  # neither penalized for its past nor owed B's run


def test_priority_orders_inside_a_key_never_across_keys(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    [a_low] = _submit(stores, a, queue, 1, priority=-10)
    [a_high] = _submit(stores, a, queue, 1, priority=50)
    [b_job] = _submit(stores, b, queue, 1, priority=-100)
    first = stores.jobs.get(stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)[0].job_id)
    rest = [c.job_id for _ in range(2) for c in stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)]
    order = [first.id, *rest]
    assert order.index(a_high) < order.index(a_low)  # inside A: priority
    # across keys: B's -100 does not wait for both of A's jobs
    assert order.index(b_job) < 2


def test_batch_fill_takes_compatible_jobs_in_fair_order_and_charges_each_key(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 10)
    _submit(stores, b, queue, 10)
    _submit(stores, a, queue, 3, compat="generate:256:16:3.0:constant")  # same queue, other compat key
    claims = stores.jobs.claim_next(queue, WORKER, 60, 4, 10**9)
    jobs = [stores.jobs.get(c.job_id) for c in claims]
    assert len(jobs) == 4 and len({j.compat_key for j in jobs}) == 1
    assert Counter(j.owner_id for j in jobs) == Counter({a: 2, b: 2})
    with stores.sessions() as s:
        served = dict(s.execute(select(FairShare.owner_id, FairShare.served_jobs)
                                .where(FairShare.queue == queue)).tuples().all())
    assert served == {a: 2, b: 2}


def test_batch_fill_respects_the_pixel_budget(stores: Stores) -> None:
    queue, a = _queue(), stores.new_owner()
    _submit(stores, a, queue, 6)
    claims = stores.jobs.claim_next(queue, WORKER, 60, 8, 3 * 256 * 256)
    assert len(claims) == 3


def test_batch_fill_finds_its_own_keys_jobs_behind_many_keys_gone_idle(stores: Stores) -> None:
    # Given ten keys whose queued jobs were canceled: their fair-share rows (at the same virtual time, and
    # sorting first) are still there, since a claim forgets idle keys only after its own transaction
    queue = _queue()
    for _ in range(10):
        owner = stores.new_owner()
        [job_id] = _submit(stores, owner, queue, 1)
        stores.jobs.request_cancel(job_id, owner)
    a = stores.new_owner()
    _submit(stores, a, queue, 2)
    # When the queue is claimed with room for eight
    claims = stores.jobs.claim_next(queue, WORKER, 60, 8, 10**9)
    # Then both of the remaining key's jobs form the batch
    assert [stores.jobs.get(c.job_id).owner_id for c in claims] == [a, a]


def test_a_message_whose_job_was_taken_still_claims_from_its_queue(stores: Stores) -> None:
    queue, a = _queue(), stores.new_owner()
    first, second = _submit(stores, a, queue, 2)
    assert [c.job_id for c in stores.jobs.claim_for_message(second, WORKER, 60, 1, 10**9)] == [first]
    assert [c.job_id for c in stores.jobs.claim_for_message(first, WORKER, 60, 1, 10**9)] == [second]
    assert stores.jobs.claim_for_message(first, WORKER, 60, 1, 10**9) == []  # queue empty: a no-op
    assert stores.jobs.claim_for_message("no-such-job", WORKER, 60, 1, 10**9) == []


def test_a_message_for_an_emptied_queue_is_one_read_once_its_keys_are_forgotten(stores: Stores) -> None:
    # Given a queue whose two jobs one message claimed (both messages stay: the second is left over)
    queue, a = _queue(), stores.new_owner()
    first, second = _submit(stores, a, queue, 2)
    assert len(stores.jobs.claim_for_message(first, WORKER, 60, 8, 10**9)) == 2
    statements: list[str] = []
    engine = stores.sessions.kw["bind"]

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split(None, 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE"):  # not SQLite's BEGIN
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        # When the left-over message arrives, and then another
        assert stores.jobs.claim_for_message(second, WORKER, 60, 8, 10**9) == []
        tidied = list(statements)
        statements.clear()
        assert stores.jobs.claim_for_message(second, WORKER, 60, 8, 10**9) == []
        after = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # Then the first still claimed (it forgot A's fair-share row: A banks no credit while idle), the second was one
    # read; and a job queued later is claimed by a message again
    assert len(tidied) > 1
    with stores.sessions() as s:
        assert s.scalars(select(FairShare.owner_id).where(FairShare.queue == queue)).all() == []
    assert len(after) == 1, after
    [third] = _submit(stores, a, queue, 1)
    assert [c.job_id for c in stores.jobs.claim_for_message(second, WORKER, 60, 8, 10**9)] == [third]


def test_queues_worth_claiming_hold_a_queued_job_or_a_key_left_to_forget(stores: Stores) -> None:
    # Given a queue with queued jobs, one whose last job was claimed (its key's fair-share row not yet forgotten),
    # one emptied and tidied by a claim that found nothing, and one never used
    busy, untidy, tidied, unused, a = _queue(), _queue(), _queue(), _queue(), stores.new_owner()
    _submit(stores, a, busy, 2)
    for queue in (untidy, tidied):
        _submit(stores, a, queue, 1)
        assert len(stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)) == 1
    assert stores.jobs.claim_next(tidied, WORKER, 60, 1, 10**9) == []  # forgets A there

    # Then one read names the two a claim could do anything in
    assert stores.jobs.queues_worth_claiming([busy, untidy, tidied, unused, busy]) == {busy, untidy}
    assert stores.jobs.queues_worth_claiming([]) == set()


def test_a_message_claims_only_from_its_own_queue_and_kinds(stores: Stores) -> None:
    queue, other, a = _queue(), _queue(), stores.new_owner()
    [mine] = _submit(stores, a, queue, 1)
    _submit(stores, a, other, 3)
    assert stores.jobs.claim_for_message(mine, WORKER, 60, 8, 10**9, kinds=["understand"]) == []
    assert [c.job_id for c in stores.jobs.claim_for_message(mine, WORKER, 60, 8, 10**9)] == [mine]


def test_a_released_job_reactivates_its_key(stores: Stores) -> None:
    queue, a = _queue(), stores.new_owner()
    _submit(stores, a, queue, 1)
    [claim] = stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)
    assert stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9) == []  # forgets A
    assert stores.jobs.release([claim]) == 1
    assert [c.job_id for c in stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)] == [claim.job_id]


def test_concurrent_messages_each_claim_and_none_twice(stores: Stores) -> None:
    """N jobs, N messages handled at once, one job per claim: every message claims one (no no-op while the
    queue has work) and no job is claimed twice."""
    queue = _queue()
    owners = [stores.new_owner() for _ in range(3)]
    ids = [i for k in range(24) for i in _submit(stores, owners[k % 3], queue, 1)]
    results: list[list[str]] = []
    lock = threading.Lock()

    def handle(job_id: str) -> None:
        claims = stores.jobs.claim_for_message(job_id, WORKER, 60, 1, 10**9)
        with lock:
            results.append([c.job_id for c in claims])

    threads = [threading.Thread(target=handle, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == sorted(ids)
    assert all(len(r) == 1 for r in results)


def test_queue_position_follows_the_policy(stores: Stores) -> None:
    queue, a, b = _queue(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 30, priority=-10)
    _owners_of_claims(stores, queue, 1)
    [b_job] = _submit(stores, b, queue, 1)
    assert stores.jobs.queue_position(stores.jobs.get(b_job)) == 0
    [a_bulk] = _submit(stores, a, queue, 1, priority=-10)
    assert stores.jobs.queue_position(stores.jobs.get(a_bulk)) == 30  # A's 29 older bulk jobs, then B's one
    [a_urgent] = _submit(stores, a, queue, 1, priority=0)
    assert stores.jobs.queue_position(stores.jobs.get(a_urgent)) <= 1  # A's own priority: before A's bulk


def test_estimated_start_uses_measured_throughput_and_live_workers(stores: Stores) -> None:
    from datetime import timedelta

    from storage.fleet.registry import WorkerRegistry
    from storage.tables import utcnow

    queue, a = _queue(), stores.new_owner()
    _submit(stores, a, queue, 5)
    [claim] = stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)
    [waiting] = _submit(stores, a, queue, 1)
    assert stores.jobs.queue_estimate(stores.jobs.get(waiting)).estimated_start_at is None  # no history yet
    assert stores.jobs.complete(claim, [], "ok", {"model_seconds": 2.0})  # a batch of 1: 2 s per job
    registry = WorkerRegistry(stores.sessions)
    for n in range(2):
        registry.register(f"{WORKER}-{queue}-{n}", "host", 1, queues=[queue])
    before = utcnow()
    estimate = stores.jobs.queue_estimate(stores.jobs.get(waiting))
    after = utcnow()
    assert estimate.position == 4 and estimate.estimated_start_at is not None
    # 4 jobs ahead, 2 s each, 2 workers: about 4 s from now
    assert before + timedelta(seconds=4) <= estimate.estimated_start_at <= after + timedelta(seconds=4)  # wallclock-ok: brackets the estimate's own "now", not a speed claim
    for n in range(2):
        registry.stop(f"{WORKER}-{queue}-{n}")


def test_a_full_sets_newcomer_claim_takes_a_held_keys_job_only_above_the_priorities_it_holds(stores: Stores) -> None:
    # Given a running set holding two of A's batch items (priority -10), with more of them queued
    queue, a = _queue(), stores.new_owner()
    _submit(stores, a, queue, 6, priority=-10)
    held = [c.job_id for c in stores.jobs.claim_next(queue, WORKER, 60, 2, 10**9)]
    assert stores.jobs.owners_held(held, WORKER) == {a: -10}
    # When A submits an interactive job (priority 0) and the full set asks for a newcomer
    [urgent] = _submit(stores, a, queue, 1, priority=0)
    first = stores.jobs.claim_newcomer(queue, WORKER, 60, 10**9, held)
    # Then it gets that job, and once it holds it, nothing more: A's other jobs are at or below what it holds
    assert [c.job_id for c in first] == [urgent]
    [level] = _submit(stores, a, queue, 1, priority=0)
    assert stores.jobs.claim_newcomer(queue, WORKER, 60, 10**9, [*held, urgent]) == []
    # And a plain claim still takes them in the key's order
    assert [c.job_id for c in stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9)] == [level]


def test_a_claim_can_pass_over_keys_and_finds_the_next_key_by_policy(stores: Stores) -> None:
    # Given A's backlog (served least so far), then B's and C's single jobs
    queue, a, b, c = _queue(), stores.new_owner(), stores.new_owner(), stores.new_owner()
    _submit(stores, a, queue, 20, priority=-10)
    [b_job] = _submit(stores, b, queue, 1)
    [c_job] = _submit(stores, c, queue, 1)
    # When a running set that holds A's and B's items (at their priorities) asks for a key it does not hold
    claims = stores.jobs.claim_next(queue, WORKER, 60, 4, 10**9, above={a: -10, b: 0})
    # Then it gets C's job and only that (no batch-mates of the skipped keys), B's waits for the next claim
    assert [cl.job_id for cl in claims] == [c_job]
    assert stores.jobs.claim_next(queue, WORKER, 60, 1, 10**9, above={a: -10})[0].job_id == b_job
    # And with every queued key skipped it claims nothing (no fallback over the skipped backlog)
    assert stores.jobs.claim_next(queue, WORKER, 60, 4, 10**9, above={a: -10}) == []
    assert len(stores.jobs.claim_next(queue, WORKER, 60, 4, 10**9)) == 4


@pytest.fixture
def planned_stores(storage_settings: Any, pg_url: str) -> Iterator[Stores]:
    """Stores over a Postgres schema of their own whose jobs table the test's statistics describe alone."""
    fresh = storage_settings.model_copy(update={"db_schema": storage_settings.db_schema + "_plan"})
    upgrade(fresh)
    engine = make_engine(fresh)
    sessions = make_session_factory(engine)
    try:
        yield Stores("postgres", sessions, JobStore(sessions), BatchStore(sessions), add_owner(sessions))
    finally:
        engine.dispose()
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{fresh.db_schema}" CASCADE')


def _stale_statistics_then_backlog(stores: Stores, queue: str, owner: str, n: int, per_insert: int) -> list[str]:
    """Statistics taken over finished jobs only, then `n` queued jobs of `owner` in inserts of `per_insert`."""
    for other in [stores.new_owner() for _ in range(4)]:
        _submit(stores, other, queue, 500)
    with stores.sessions() as s:
        s.execute(text("UPDATE jobs SET status = 'succeeded'"))
        s.commit()
        s.execute(text("ANALYZE jobs"))
        s.commit()
    return [job_id for _ in range(n // per_insert) for job_id in _submit(stores, owner, queue, per_insert)]


def _claim_with_plans(stores: Stores, queue: str, wanted: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """One claim of eight, and the plan of each statement it sent that `wanted` picks, in its own transaction and
    settings (a SELECT is not run twice for it; an UPDATE is only explained)."""
    engine = stores.sessions.kw["bind"]
    plans: list[str] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if wanted(statement):
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        claims = stores.jobs.claim_next(queue, WORKER, 60, 8, 10**9)
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    return sorted(c.job_id for c in claims), plans


def test_a_claim_walks_the_index_of_a_keys_queued_jobs_even_before_statistics_saw_its_backlog(
        planned_stores: Stores) -> None:
    # Given a key's backlog of 3,000 jobs, come in inserts too small to refresh the statistics, which were taken
    # over finished jobs only (autoanalyze waits for a tenth of the table to change: the backlog is "one row")
    stores, queue, a = planned_stores, _queue(), planned_stores.new_owner()
    ids = _stale_statistics_then_backlog(stores, queue, a, 3000, per_insert=500)
    # When a worker claims a batch of eight
    claimed, plans = _claim_with_plans(stores, queue, lambda q: q.startswith("SELECT jobs.") and "ORDER BY" in q)
    # Then it took the eight oldest, and no read of the key's jobs sorted its backlog: each walked an index in order
    # (Postgres took the smaller partial index of a key's active jobs and sorted all 3,000 at every claim)
    assert claimed == ids[:8]
    assert plans and not [p for p in plans if "Sort" in p], plans


def test_a_bulk_insert_shows_the_planner_its_rows_at_once(planned_stores: Stores) -> None:
    # Given statistics taken over finished jobs only, then one batch of 3,000 jobs
    stores, queue, a = planned_stores, _queue(), planned_stores.new_owner()
    ids = _stale_statistics_then_backlog(stores, queue, a, 3000, per_insert=3000)
    # When a worker claims a batch of eight
    claimed, plans = _claim_with_plans(stores, queue, lambda q: q.startswith("UPDATE jobs SET status"))
    # Then the claim's write finds its eight rows by primary key (with statistics that had not seen the batch it
    # scanned every queued job through the status index, 3 ms a claim at 9,000)
    assert claimed == ids[:8]
    assert len(plans) == 1 and "pk_jobs" in plans[0], plans


def test_refreshing_statistics_gives_up_behind_another_analyze_of_the_table(planned_stores: Stores) -> None:
    # Given another transaction holding the lock an ANALYZE of the jobs table takes
    with planned_stores.sessions() as holder:
        holder.execute(text("LOCK TABLE jobs IN SHARE UPDATE EXCLUSIVE MODE"))
        # When a bulk insert's refresh runs meanwhile
        with planned_stores.sessions() as s:
            refreshed = dialect.refresh_statistics(s, "jobs", lock_timeout_ms=50)
            # Then it gave up instead of holding the submission, and its session is usable
            assert refreshed is False
            assert s.execute(text("SELECT 1")).scalar() == 1
        holder.rollback()
    # And once the lock is gone it refreshes
    with planned_stores.sessions() as s:
        assert dialect.refresh_statistics(s, "jobs") is True
