"""Concurrent claims: every queued job is claimed exactly once, by threads and by separate processes.

Each claimer plays a worker receiving job-id messages: it claims the message's job plus compatible partners
(max 8), exactly as `workers.gpu` does; a message whose job was already taken yields an empty claim."""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import threading
from collections import Counter
from typing import Any

from sqlalchemy import update

from storage.db import make_engine, make_session_factory
from storage.jobs import JobStore
from storage.tables import Job
from tests.support.storage import add_owner, job


def _race(store: JobStore, job_ids: list[str], threads: int, worker_prefix: str) -> list[str]:
    """Claim from `threads` threads pulling ids from one message queue; every claimed job id, in any order."""
    messages: queue.Queue[str] = queue.Queue()
    for job_id in job_ids:
        messages.put(job_id)
    claimed: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        try:
            while True:
                try:
                    job_id = messages.get_nowait()
                except queue.Empty:
                    return
                claims = store.claim_batch(job_id, f"{worker_prefix}-{n}", 60, max_items=8, max_pixels=10**9)
                with lock:
                    claimed.extend(c.job_id for c in claims)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return claimed


def _retire(store: JobStore, compat: str) -> None:
    """Test cleanup: finish the claimed jobs so later table-wide sweeps in this schema don't wade through them."""
    with store.sessions.begin() as s:
        s.execute(update(Job).where(Job.compat_key == compat).values(status="failed", lease_token=None))


def _create(store: JobStore, owner: str, n: int) -> tuple[str, list[str]]:
    compat = f"generate:256:8:3.0:{secrets.token_hex(4)}"
    _, recs = store.create_many([job(owner, compat) for _ in range(n)])
    return compat, [r.id for r in recs]


def test_fifty_threads_claim_a_thousand_jobs_exactly_once(storage_settings: Any) -> None:
    engine = make_engine(storage_settings, pool_size=50, max_overflow=5)
    try:
        store = JobStore(make_session_factory(engine))
        compat, ids = _create(store, add_owner(store.sessions), 1000)
        claimed = _race(store, ids, threads=50, worker_prefix="t")
        assert Counter(claimed) == Counter(ids)  # each exactly once, none missed
        assert {r.status for r in store.get_many(ids)} == {"running"}
        _retire(store, compat)
    finally:
        engine.dispose()


def test_sqlite_threads_claim_exactly_once(sqlite_sessions: Any) -> None:
    store = JobStore(sqlite_sessions)
    compat, ids = _create(store, add_owner(sqlite_sessions), 200)
    claimed = _race(store, ids, threads=8, worker_prefix="s")
    assert Counter(claimed) == Counter(ids)
    _retire(store, compat)


def _claim_in_process(settings_json: str, job_ids: list[str], out: Any) -> None:
    from storage.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    engine = make_engine(settings)
    store = JobStore(make_session_factory(engine))
    claimed: list[str] = []
    for job_id in job_ids:
        claimed.extend(c.job_id for c in store.claim_batch(job_id, "p", 60, max_items=4, max_pixels=10**9))
    out.put(claimed)
    engine.dispose()


def test_processes_claim_exactly_once(storage_settings: Any, storage_jobs: JobStore) -> None:
    job_store = storage_jobs
    # Given 120 queued jobs and 2 processes that all receive every message
    compat, ids = _create(job_store, add_owner(job_store.sessions), 120)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(storage_settings.model_dump_json(), ids, out)) for _ in range(2)]
    for p in procs:
        p.start()
    # When they race, Then the union of their claims covers every job exactly once
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert Counter(j for r in results for j in r) == Counter(ids)
    _retire(job_store, compat)


def test_cancel_racing_claims_never_loses_a_cancel(storage_jobs: JobStore) -> None:
    # Given 40 queued jobs, When one thread claims them while another cancels them all
    compat, ids = _create(storage_jobs, add_owner(storage_jobs.sessions), 40)
    owner = storage_jobs.get(ids[0]).owner_id
    errors: list[Exception] = []

    def claim() -> None:
        for job_id in ids:
            storage_jobs.claim_batch(job_id, "w", 60, max_items=3, max_pixels=10**9)

    def cancel() -> None:
        for job_id in ids:
            try:
                storage_jobs.request_cancel(job_id, owner)
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every job is either canceled outright or running with its cancel requested
    assert not errors, errors
    for rec in storage_jobs.get_many(ids):
        assert rec.status == "canceled" or (rec.status == "running" and rec.cancel_requested), rec
    _retire(storage_jobs, compat)
