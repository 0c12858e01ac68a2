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

from storage.db import make_engine, make_session_factory
from storage.jobs import JobStore
from tests.storage.conftest import add_owner, job


def _race(store: JobStore, job_ids: list[str], threads: int, worker_prefix: str) -> list[str]:
    """Claim from `threads` threads pulling ids from one message queue; every claimed job id, in any order."""
    messages: queue.Queue[str] = queue.Queue()
    for job_id in job_ids:
        messages.put(job_id)
    claimed: list[str] = []
    errors: list[BaseException] = []
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
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return claimed


def _create(store: JobStore, owner: str, n: int) -> tuple[str, list[str]]:
    compat = f"generate:256:8:3.0:{secrets.token_hex(4)}"
    _, recs = store.create_many([job(owner, compat) for _ in range(n)])
    return compat, [r.id for r in recs]


def test_fifty_threads_claim_a_thousand_jobs_exactly_once(settings: Any, migrated: Any) -> None:
    engine = make_engine(settings, pool_size=50, max_overflow=5)
    try:
        store = JobStore(make_session_factory(engine))
        _, ids = _create(store, add_owner(store.sessions), 1000)
        claimed = _race(store, ids, threads=50, worker_prefix="t")
        assert Counter(claimed) == Counter(ids)  # each exactly once, none missed
        assert {r.status for r in store.get_many(ids)} == {"running"}
    finally:
        engine.dispose()


def test_sqlite_threads_claim_exactly_once(sqlite_sessions: Any) -> None:
    store = JobStore(sqlite_sessions)
    _, ids = _create(store, add_owner(sqlite_sessions), 200)
    claimed = _race(store, ids, threads=8, worker_prefix="s")
    assert Counter(claimed) == Counter(ids)


def _claim_in_process(settings_json: str, job_ids: list[str], out: Any) -> None:
    from storage.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    engine = make_engine(settings)
    store = JobStore(make_session_factory(engine))
    claimed = []
    for job_id in job_ids:
        claimed.extend(c.job_id for c in store.claim_batch(job_id, "p", 60, max_items=4, max_pixels=10**9))
    out.put(claimed)
    engine.dispose()


def test_processes_claim_exactly_once(settings: Any, job_store: JobStore) -> None:
    # Given 120 queued jobs and 2 processes that all receive every message
    _, ids = _create(job_store, add_owner(job_store.sessions), 120)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(settings.model_dump_json(), ids, out)) for _ in range(2)]
    for p in procs:
        p.start()
    # When they race, Then the union of their claims covers every job exactly once
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert Counter(j for r in results for j in r) == Counter(ids)
