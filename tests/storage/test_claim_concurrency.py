"""Concurrent claims on the production path (`JobStore.claim_next`): every queued job is claimed exactly once.

Each claimer plays a worker whose messages keep waking it for one queue: it claims that queue (up to 8 jobs, as
`workers.gpu` does) again and again until a claim comes back empty, every claimer with its own sessions (threads
share an engine's pool; processes have engines of their own). Jobs come from several API keys and two compat
keys, so fair share, batch fill and the liveness fallback all run under contention. Every test uses a queue of
its own, so no other test's jobs are in the race."""

from __future__ import annotations

import multiprocessing
import secrets
import threading
from collections import Counter
from typing import Any

from sqlalchemy import update

from storage.db import make_engine, make_session_factory
from storage.jobs import JobStore
from storage.tables import Job
from tests.support.storage import add_owner, job

MAX_ITEMS = 8

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


def _retire(store: JobStore, queue: str) -> None:
    """Test cleanup: finish the claimed jobs so later table-wide sweeps in this schema don't wade through them."""
    with store.sessions.begin() as s:
        s.execute(update(Job).where(Job.queue == queue).values(status="failed", lease_token=None))


def test_fifty_threads_drain_a_thousand_jobs_each_claimed_exactly_once(storage_settings: Any) -> None:
    engine = make_engine(storage_settings, pool_size=50, max_overflow=5)
    try:
        store = JobStore(make_session_factory(engine))
        # Given 1000 queued jobs of three keys in one queue
        queue, ids = _create(store, 1000)
        # When 50 claimers race until the queue is empty
        claimed = _race(store, queue, claimers=50, worker_prefix="t")
        # Then every job was claimed exactly once, by the claimer that holds its lease
        _assert_exactly_once(store, ids, claimed)
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
