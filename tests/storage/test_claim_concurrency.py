"""Concurrent claims on the production path (`JobStore.claim_next`): every queued job is claimed exactly once.

Each claimer plays a worker whose messages keep waking it for one queue: it claims that queue (up to 8 jobs, as
`workers.gpu` does) again and again until a claim comes back empty, every claimer with its own sessions (threads
share an engine's pool; processes have engines of their own). Jobs come from several API keys and two compat
keys, so fair share, batch fill and the liveness fallback all run under contention, and no claim may be a
deadlock victim (`storage.db.retry_deadlocks` would hide one, at the cost of Postgres's deadlock_timeout). The
fallback's lock waits are also checked one at a time: it waits for a row a claim holds, takes it if it is still
queued, and keeps no lock on it if not. Every test uses a queue of its own, so no other test's jobs are in the
race."""

from __future__ import annotations

import logging
import multiprocessing
import queue as queues
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from storage.db import make_engine, make_session_factory, write_session
from storage.jobs.store import JobStore
from storage.scheduling import policy as scheduling
from storage.tables import Job, utcnow
from tests.support.storage import add_owner, job
from tests.support.waiting import wait_for

MAX_ITEMS = 8
WAIT = 60.0  # liveness bound on a thread's answer

Claimed = tuple[str, str, str]  # (job id, worker id, lease token)


def _drain(store: JobStore, queue: str, worker_id: str, start: threading.Barrier | None = None) -> list[Claimed]:
    """One claimer: claim `queue` until a claim comes back empty; what it claimed."""
    if start is not None:
        start.wait()
    got: list[Claimed] = []
    while claims := store.claim_next(queue, worker_id, 60, MAX_ITEMS, 10**9):
        got.extend((c.job_id, worker_id, c.lease_token) for c in claims)
    return got


def _race(store: JobStore, queue: str, claimers: int, worker_prefix: str) -> list[Claimed]:
    """`claimers` threads, released together, each draining `queue`; everything they claimed."""
    start = threading.Barrier(claimers)
    claimed: list[Claimed] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        try:
            got = _drain(store, queue, f"{worker_prefix}-{n}", start)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
            return
        with lock:
            claimed.extend(got)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return claimed


def _create(store: JobStore, n: int, owners: int = 3) -> tuple[str, list[str]]:
    """`n` queued jobs in a new queue, spread over `owners` keys and two compat keys."""
    queue = f"unipic.generate.c{secrets.token_hex(4)}"
    keys = [add_owner(store.sessions) for _ in range(owners)]
    compat = [f"generate:256:8:3.0:{secrets.token_hex(4)}" for _ in range(2)]
    _, recs = store.create_many([job(keys[i % owners], compat[i % 2], queue=queue) for i in range(n)])
    return queue, [r.id for r in recs]


def _assert_exactly_once(store: JobStore, ids: list[str], claimed: list[Claimed]) -> None:
    """Each job claimed once, none missed, and each row held by the claimer that believes it holds it."""
    assert Counter(job_id for job_id, _, _ in claimed) == Counter(ids)
    rows = {r.id: r for r in store.get_many(ids)}
    assert {r.status for r in rows.values()} == {"running"}
    for job_id, worker_id, token in claimed:
        assert (rows[job_id].worker_id, rows[job_id].lease_token) == (worker_id, token)


def _deadlock_victims(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The reruns `storage.db.retry_deadlocks` logged: each one a transaction Postgres aborted as a deadlock."""
    return [r.getMessage() for r in caplog.records if r.name == "storage.db" and "deadlock victim" in r.getMessage()]


def _retire(store: JobStore, queue: str) -> None:
    """Test cleanup: finish the claimed jobs so later table-wide sweeps in this schema don't wade through them."""
    with store.sessions.begin() as s:
        s.execute(update(Job).where(Job.queue == queue).values(status="failed", lease_token=None))


def test_fifty_threads_drain_a_thousand_jobs_each_claimed_exactly_once(
    storage_settings: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine(storage_settings, pool_size=50, max_overflow=5)
    try:
        store = JobStore(make_session_factory(engine))
        # Given 1000 queued jobs of three keys in one queue
        queue, ids = _create(store, 1000)
        # When 50 claimers race until the queue is empty
        with caplog.at_level(logging.INFO, logger="storage.db"):
            claimed = _race(store, queue, claimers=50, worker_prefix="t")
        # Then every job was claimed exactly once, by the claimer that holds its lease, and no claim deadlocked
        _assert_exactly_once(store, ids, claimed)
        assert _deadlock_victims(caplog) == []
        assert store.claim_next(queue, "late", 60, MAX_ITEMS, 10**9) == []
        _retire(store, queue)
    finally:
        engine.dispose()


def test_sqlite_threads_drain_exactly_once(sqlite_sessions: Any) -> None:
    store = JobStore(sqlite_sessions)
    queue, ids = _create(store, 200)
    claimed = _race(store, queue, claimers=8, worker_prefix="s")
    _assert_exactly_once(store, ids, claimed)
    _retire(store, queue)


def _drain_in_process(settings_json: str, queue: str, worker_id: str, out: Any) -> None:
    from storage.settings import Settings

    engine = make_engine(Settings.model_validate_json(settings_json))
    try:
        out.put(_drain(JobStore(make_session_factory(engine)), queue, worker_id))
    finally:
        engine.dispose()


def test_processes_drain_exactly_once(storage_settings: Any, storage_jobs: JobStore) -> None:
    # Given 400 queued jobs and 4 worker processes, each with its own engine, claiming the same queue
    queue, ids = _create(storage_jobs, 400)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    settings_json = storage_settings.model_dump_json()
    procs = [ctx.Process(target=_drain_in_process, args=(settings_json, queue, f"p-{n}", out)) for n in range(4)]
    for p in procs:
        p.start()
    # When they race until the queue is empty, Then the union of their claims covers every job exactly once
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    _assert_exactly_once(storage_jobs, ids, [c for r in results for c in r])
    _retire(storage_jobs, queue)


def test_cancel_racing_claims_never_loses_a_cancel(storage_jobs: JobStore) -> None:
    # Given 40 queued jobs of one key, When one thread drains the queue while another cancels them all
    queue, ids = _create(storage_jobs, 40, owners=1)
    owner = storage_jobs.get(ids[0]).owner_id
    errors: list[Exception] = []

    def cancel() -> None:
        for job_id in ids:
            try:
                storage_jobs.request_cancel(job_id, owner)
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=_drain, args=(storage_jobs, queue, "w")), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every job is either canceled outright or running with its cancel requested
    assert not errors, errors
    for rec in storage_jobs.get_many(ids):
        assert rec.status == "canceled" or (rec.status == "running" and rec.cancel_requested), rec
    _retire(storage_jobs, queue)


@contextmanager
def _holder(sessions: Any, job_id: str, **values: Any) -> Iterator[int]:
    """Another transaction holding `job_id`'s row lock (updating it with `values`) until the block ends, when it
    commits; yields its backend pid."""
    with sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(**values))
        yield int(s.scalar(text("SELECT pg_backend_pid()")))


def _blocked_by(sessions: Any, pid: int) -> bool:
    """Whether some backend waits for a lock `pid` holds."""
    with sessions() as s:
        return bool(s.scalar(select(func.count()).select_from(text("pg_stat_activity"))
                             .where(text(":pid = ANY(pg_blocking_pids(pid))")), {"pid": pid}))


def test_a_claim_waits_for_a_job_locked_by_someone_else_and_takes_it(storage_jobs: JobStore) -> None:
    # Given the only queued job of a queue, locked by a transaction that leaves it queued (the API stamping it)
    queue, (job_id,) = _create(storage_jobs, 1, owners=1)
    answer: queues.Queue[list[str]] = queues.Queue()
    claimer = threading.Thread(target=lambda: answer.put(
        [c.job_id for c in storage_jobs.claim_next(queue, "w", 60, MAX_ITEMS, 10**9)]))
    with _holder(storage_jobs.sessions, job_id, last_enqueued_at=utcnow()) as pid:
        # When a claim runs meanwhile, Then it waits for the lock instead of reporting nothing to claim
        claimer.start()
        wait_for(lambda: _blocked_by(storage_jobs.sessions, pid), "the claim to wait for the row lock")
    # And once the holder commits, it takes the job
    assert answer.get(timeout=WAIT) == [job_id]
    claimer.join()
    _retire(storage_jobs, queue)


def test_a_newcomer_claim_waits_for_a_job_locked_by_someone_else_and_takes_it(storage_jobs: JobStore) -> None:
    # Given tenant A's bulk queued and held by a full running set, and tenant B's one job, its row locked by a
    # transaction that leaves it queued (the API stamping `last_enqueued_at` after its message went out: the
    # worker heard the job arrive and claims it as the set's newcomer at that moment)
    queue = f"unipic.generate.c{secrets.token_hex(4)}"
    a, b = add_owner(storage_jobs.sessions), add_owner(storage_jobs.sessions)
    storage_jobs.create_many([job(a, priority=-10, queue=queue) for _ in range(3)])
    _, (b_job,) = storage_jobs.create_many([job(b, queue=queue)])
    answer: queues.Queue[list[str]] = queues.Queue()
    claimer = threading.Thread(target=lambda: answer.put(
        [c.job_id for c in storage_jobs.claim_next(queue, "w", 60, 1, 10**9, above={a: -10})]))
    with _holder(storage_jobs.sessions, b_job.id, last_enqueued_at=utcnow()) as pid:
        # When the newcomer claim (passing over A's key) runs meanwhile, Then it waits for the lock instead of
        # finding nothing (B's job then waited for the next wake-up: a quarter of a second in `bench.fairness`)
        claimer.start()
        wait_for(lambda: _blocked_by(storage_jobs.sessions, pid), "the newcomer claim to wait for the row lock")
    # And once the holder commits, it takes B's job, none of A's
    assert answer.get(timeout=WAIT) == [b_job.id]
    claimer.join()
    _retire(storage_jobs, queue)


def test_a_claim_keeps_no_lock_on_a_job_someone_else_took_while_it_waited(storage_jobs: JobStore) -> None:
    # Given the only queued job of a queue, locked by another claim that is taking it
    queue, (job_id,) = _create(storage_jobs, 1, owners=1)
    picked: queues.Queue[list[str]] = queues.Queue()
    done = threading.Event()

    def claim() -> None:  # the scheduling step of a claim, its transaction left open until the check below
        s: Session
        with write_session(storage_jobs.sessions) as s:
            picked.put([r.id for r in scheduling.pick(s, queue, utcnow(), MAX_ITEMS, 10**9).rows])
            done.wait(WAIT)

    claimer = threading.Thread(target=claim)
    with _holder(storage_jobs.sessions, job_id, status="running") as pid:
        claimer.start()
        wait_for(lambda: _blocked_by(storage_jobs.sessions, pid), "the claim to wait for the row lock")
    # When the other claim commits, Then the waiting claim picks nothing
    try:
        assert picked.get(timeout=WAIT) == []
        # And, its transaction still open, it holds no lock on the row that failed its re-check (a lock kept
        # there is what made claims wait on each other in a cycle)
        with storage_jobs.sessions() as s, s.begin():
            assert s.scalar(select(Job.id).where(Job.id == job_id).with_for_update(skip_locked=True)) == job_id
    finally:
        done.set()
        claimer.join()
    _retire(storage_jobs, queue)
