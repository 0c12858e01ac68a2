"""Idle costs nothing: a long-polling gateway claim waits on its queues' wake-ups (Redis, after the commit that
made a job claimable, through the API process's event hub), reads Postgres only when woken or on the slow safety
tick, and a lost wake-up costs at most one tick. Real uvicorn, Postgres, Redis and S3; waits on states."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import event

from storage.routing import queue_for
from tests.support.jobs import make_job, make_jobs
from tests.support.serving import serve_app
from tests.support.waiting import wait_for

QUEUE = queue_for("generate", 256)  # the one queue a generate-only token capped at 512x512 serves
SLOW_TICK_S = 60.0
FAST_TICK_S = 0.5
WAITERS = 20




def _app(migrated: Any, tick: float) -> Any:
    from api.app import create_app

    app = create_app(migrated.model_copy(update={"rate_limit_per_minute": 100_000,
                                                 "gateway_claim_tick_seconds": tick}))
    app.state.services.key_cache.ttl = 0
    return app


@pytest.fixture(scope="module")
def slow_app(migrated: Any) -> Any:
    return _app(migrated, SLOW_TICK_S)


@pytest.fixture(scope="module")
def slow_url(slow_app: Any) -> Iterator[str]:
    with serve_app(slow_app) as url:
        yield url


@pytest.fixture(scope="module")
def fast_app(migrated: Any) -> Any:
    return _app(migrated, FAST_TICK_S)


@pytest.fixture(scope="module")
def fast_url(fast_app: Any) -> Iterator[str]:
    with serve_app(fast_app) as url:
        yield url


@pytest.fixture
def headers(services: Any) -> dict[str, str]:
    from storage.fleet.tokens import WorkerTokenStore

    _, plaintext = WorkerTokenStore(services.jobs.sessions).create("idle-gpu", kinds=["generate"],
                                                                   max_pixels=512 * 512)
    return {"Authorization": f"Bearer {plaintext}"}


def _claims(url: str, headers: dict[str, str], n: int, wait_seconds: float,
            max_items: int = 1) -> tuple[list[Any], threading.Thread]:
    """`n` concurrent long-polling claims (async httpx, in a thread); their answers land in the list."""
    answers: list[Any] = []

    async def one(client: httpx.AsyncClient, i: int) -> Any:
        started = time.monotonic()
        response = await client.post(f"{url}/v1/worker/claim", headers=headers, json={
            "worker": f"idle:{i}", "max_items": max_items, "wait_seconds": wait_seconds,
            "claim_id": str(uuid.uuid4()),
            "first_try": True})  # as `workers.transport.gateway_client` sends a claim
        return response.status_code, response.json(), time.monotonic() - started

    async def run() -> None:
        async with httpx.AsyncClient(timeout=wait_seconds + 30) as client:
            answers.extend(await asyncio.gather(*(one(client, i) for i in range(n))))

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return answers, thread


def _transactions(app: Any) -> Callable[[], int]:
    """Counts the transactions the app's engine begins from now on."""
    engine = app.state.services.jobs.sessions.kw["bind"]
    seen = [0]

    def begin(_conn: Any) -> None:
        seen[0] += 1

    event.listen(engine, "begin", begin)
    return lambda: seen[0]


def test_a_waiting_claim_returns_when_a_job_is_created_in_its_queue(
    slow_app: Any, slow_url: str, headers: dict[str, str], owner_id: str,
) -> None:
    # Given a claim long-polling an empty queue, with a safety tick (60 s) longer than its wait (30 s)
    hub = slow_app.state.event_hub
    services = slow_app.state.services
    answers, thread = _claims(slow_url, headers, 1, wait_seconds=30)
    wait_for(lambda: hub.waiting(QUEUE) == 1 and hub.known_empty(QUEUE, SLOW_TICK_S),
             "the claim to have looked and to wait on its queue", timeout=30)
    woken_before = hub.queue_wakeups
    # When a job is committed into that queue
    job = make_job(services.jobs, services.objects, owner_id, "generate", 256, seed=1)
    thread.join(timeout=40)
    # Then the claim returns it, and it was the commit's wake-up that ended its wait (not the wait's end or a tick)
    [(status, body, elapsed)] = answers
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == [job.id]
    assert hub.queue_wakeups == woken_before + 1, f"claim returned after {elapsed:.1f}s without being woken"


def test_claims_that_arrive_together_at_a_backlog_each_take_their_batch_at_once(
    slow_app: Any, slow_url: str, headers: dict[str, str], owner_id: str,
) -> None:
    # Given 20 jobs queued before any claim waits (their wake-up reached no one), and a safety tick (60 s) longer
    # than the claims' wait (20 s)
    hub = slow_app.state.event_hub
    services = slow_app.state.services
    wait_for(lambda: hub.waiting(QUEUE) == 0, "earlier claims to end", timeout=30)
    jobs = make_jobs(services.jobs, services.objects, owner_id, "generate", 256, range(100, 100 + 2 * WAITERS // 2))
    # When 10 claims of up to 2 jobs arrive together
    answers, thread = _claims(slow_url, headers, WAITERS // 2, wait_seconds=20, max_items=2)
    thread.join(timeout=60)
    # Then each took jobs of the backlog (one or two: rows another claim holds locked are skipped): none was left
    # to wait for a wake-up or the tick because another claim was reading the queue when it looked (it waited for
    # that read, saw it take jobs, and read the queue itself)
    assert all(status == 200 for status, _, _ in answers)
    taken = [j["job_id"] for _, body, _ in answers for j in body["jobs"]]
    assert all(body["jobs"] for _, body, _ in answers), sorted(len(body["jobs"]) for _, body, _ in answers)
    assert len(set(taken)) == len(taken) and set(taken) <= {j.id for j in jobs}


def test_a_newcomer_look_hears_every_wake_up_and_takes_none_from_an_idle_claim(
    slow_app: Any, slow_url: str, headers: dict[str, str], owner_id: str, session_factory: Any,
) -> None:
    from tests.support.storage import add_owner

    hub = slow_app.state.event_hub
    services = slow_app.state.services
    wait_for(lambda: hub.waiting(QUEUE) == 0, "earlier claims to end", timeout=30)
    # Given a busy worker holding tenant A's job, long-polling for a job of another key (a newcomer look), and
    # then an idle worker's claim waiting on the same queue (safety tick 60 s, longer than both waits)
    held = make_job(services.jobs, services.objects, owner_id, "generate", 256, seed=11)
    took = httpx.post(f"{slow_url}/v1/worker/claim", headers=headers, json={"worker": "busy:1", "wait_seconds": 0})
    assert [j["job_id"] for j in took.json()["jobs"]] == [held.id]
    look, look_thread = _post_in_thread(f"{slow_url}/v1/worker/claim", headers, {
        "worker": "busy:1", "queue": QUEUE, "skip_owners_of": [held.id], "wait_seconds": 30})
    wait_for(lambda: hub.waiting(QUEUE) == 1, "the newcomer look to wait", timeout=30)
    idle, idle_thread = _post_in_thread(f"{slow_url}/v1/worker/claim", headers, {"worker": "idle:0",
                                                                                   "wait_seconds": 30})
    wait_for(lambda: hub.waiting(QUEUE) == 2, "the idle claim to wait", timeout=30)
    # When tenant A's next job is committed (one wake-up, the look heard first)
    more = make_job(services.jobs, services.objects, owner_id, "generate", 256, seed=12)
    idle_thread.join(timeout=40)
    # Then the idle claim took it at once (the look passed over it and did not use the wake-up up)
    assert [j["job_id"] for j in idle[0].json()["jobs"]] == [more.id]
    assert look_thread.is_alive()
    # And when tenant B's job is committed, the look returns it
    newcomer = make_job(services.jobs, services.objects, add_owner(session_factory), "generate", 256, seed=13)
    look_thread.join(timeout=40)
    assert [j["job_id"] for j in look[0].json()["jobs"]] == [newcomer.id]


def _post_in_thread(url: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[list[Any], threading.Thread]:
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(httpx.post(url, headers=headers, json=body, timeout=60)),
                              daemon=True)
    thread.start()
    return answer, thread


def test_idle_claims_cost_a_bounded_number_of_transactions(
    slow_app: Any, slow_url: str, headers: dict[str, str],
) -> None:
    # Given an empty queue that a claim of this API process just found empty (with a worker token it has seen),
    # and a count of its database transactions
    hub = slow_app.state.event_hub
    tokens = slow_app.state.services.worker_token_cache
    wait_for(lambda: hub.waiting(QUEUE) == 0, "earlier claims to end", timeout=30)
    first = httpx.post(f"{slow_url}/v1/worker/claim", headers=headers, json={"worker": "idle:0", "wait_seconds": 0})
    assert first.status_code == 200 and not first.json()["jobs"]
    count, sweeps, lookups, woken = _transactions(slow_app), tokens.sweeps, tokens.lookups, hub.queue_wakeups
    # When 20 claims long-poll it for 4 s
    answers, thread = _claims(slow_url, headers, WAITERS, wait_seconds=4)
    thread.join(timeout=40)
    # Then they all come back empty, having cost no token lookup and no claim-id lookup (first tries), the
    # token cache's sweeps (one per second at most) and a look in all (a claim skips a queue another claim of
    # this process just found empty with no wake-up since; a look may cost a second transaction, forgetting idle
    # keys), plus one look per claim woken by a job committed elsewhere meanwhile; not one look per poll each
    assert len(answers) == WAITERS and all(s == 200 and not b["jobs"] for s, b, _ in answers)
    assert tokens.lookups == lookups
    swept, woken = tokens.sweeps - sweeps, hub.queue_wakeups - woken
    assert count() <= swept + 2 * (1 + woken), f"{count()} transactions: {swept} sweeps, {woken} wake-ups"


def test_a_lost_wakeup_costs_at_most_a_safety_tick(
    fast_app: Any, fast_url: str, headers: dict[str, str], owner_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a claim waiting on an empty queue (safety tick 0.5 s), and Redis refusing every publish
    hub = fast_app.state.event_hub
    services = fast_app.state.services
    answers, thread = _claims(fast_url, headers, 1, wait_seconds=20)
    wait_for(lambda: hub.waiting(QUEUE) == 1 and hub.live, "the claim to wait on its queue", timeout=30)

    def refuse(*_args: Any, **_kw: Any) -> Any:
        raise redis.ConnectionError("publish refused (fault injected)")

    monkeypatch.setattr(redis.Redis, "pipeline", refuse)
    # When a job is committed into its queue (its wake-up is lost)
    wakeups = hub.queue_wakeups
    job = make_job(services.jobs, services.objects, owner_id, "generate", 256, seed=2)
    thread.join(timeout=40)
    # Then the claim still takes it, on its safety tick, with no wake-up delivered
    [(status, body, elapsed)] = answers
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == [job.id]
    assert hub.queue_wakeups == wakeups


def test_heartbeats_of_many_workers_are_written_together(slow_app: Any, slow_url: str,
                                                         headers: dict[str, str]) -> None:
    # Given 20 registered remote workers
    registry = slow_app.state.services.registry
    batcher = slow_app.state.heartbeats
    names = [f"beat:{i}" for i in range(WAITERS)]
    with httpx.Client(base_url=slow_url, headers=headers, timeout=30) as client:
        for name in names:
            assert client.post("/v1/worker/heartbeat", json={"worker": name, "start": True}).status_code == 200
        before = {w.id: w for w in registry.all() if w.id.endswith(tuple(f":{n}" for n in names))}
        flushes, tokens = batcher.flushes, slow_app.state.services.worker_token_cache
        count, sweeps, lookups = _transactions(slow_app), tokens.sweeps, tokens.lookups
        # When each beats twice, reporting a batch each time
        for _ in range(2):
            for name in names:
                beat = client.post("/v1/worker/heartbeat", json={"worker": name, "batches": 1, "jobs": 2})
                assert beat.status_code == 200
        wait_for(lambda: batcher.flushes > flushes, "the batched heartbeats to be written", timeout=30)
    # Then the beats cost the database no token check (the token cache's sweeps aside), and one transaction per
    # batched write for them all
    written, swept = batcher.flushes - flushes, tokens.sweeps - sweeps
    assert tokens.lookups == lookups
    assert count() <= written + swept, f"{count()} transactions for {2 * WAITERS} beats in {written} writes"
    after = {w.id: w for w in registry.all() if w.id in before}
    assert len(after) == WAITERS
    for worker_id, worker in after.items():
        assert worker.last_heartbeat_at > before[worker_id].last_heartbeat_at
        assert (worker.batches_served, worker.jobs_served) == (2, 4)


def test_a_claim_right_after_this_process_commits_a_job_reads_the_queue_before_the_wake_up_arrives(
    slow_app: Any, slow_url: str, headers: dict[str, str], owner_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a queue a claim just found empty (the hub skips it until a wake-up), and the API process's job events
    # held on their way to Redis (its publisher's thread waits: Redis slow to answer)
    hub = slow_app.state.event_hub
    services = slow_app.state.services
    wait_for(lambda: hub.waiting(QUEUE) == 0 and hub.live, "earlier claims to end", timeout=30)
    answers, thread = _claims(slow_url, headers, 1, wait_seconds=0)
    thread.join(timeout=30)
    assert answers[0][0] == 200 and answers[0][1]["jobs"] == [] and hub.known_empty(QUEUE, SLOW_TICK_S)
    inner, gate = services.publisher.inner, threading.Event()
    publish = inner.publish
    monkeypatch.setattr(inner, "publish", lambda events: (gate.wait(60), publish(events)))
    try:
        # When this process commits a job into it and a claim comes before the wake-up could reach the hub
        job = make_job(services.jobs, services.objects, owner_id, "generate", 256, seed=7)
        answers, thread = _claims(slow_url, headers, 1, wait_seconds=0)
        thread.join(timeout=30)
        # Then the claim read the queue (the commit counted as a wake-up in its own process) and took the job
        [(status, body, _)] = answers
        assert status == 200 and [j["job_id"] for j in body["jobs"]] == [job.id]
    finally:
        gate.set()
