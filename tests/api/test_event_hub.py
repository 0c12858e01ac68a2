"""`api.events.hub` and the streams on it: committed transitions wake watchers through one Redis subscription,
streams and `?wait=` answer 429 past their limits, slow watchers are dropped, a batch stream sends every item once,
a Redis restart resyncs every watcher, and the poll mode (no push) still streams. Real Redis, Postgres, S3."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.events.hub import EventHub, TooManyStreams
from storage.jobs.events import RedisPublisher, attach
from storage.objects.base import result_key
from tests.support.api import generate_body, png_bytes
from tests.support.claims import claim_job
from tests.support.serving import serve_app

PER_KEY = 2
PER_PROCESS = 5
LIVENESS_S = 20.0
RECONCILE_S = 1.0




@pytest.fixture(scope="module")
def app(api_settings: Any) -> Iterator[Any]:
    from api.app import create_app

    settings = api_settings.model_copy(update={"events_max_streams_per_key": PER_KEY,
                                               "events_max_streams": PER_PROCESS,
                                               "events_reconcile_seconds": RECONCILE_S})
    app = create_app(settings)
    app.state.services.key_cache.ttl = 0
    yield app


@pytest.fixture(scope="module")
def server_url(app: Any) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def test_per_key_stream_limit_answers_429(server_url: str, make_key: Any, app: Any) -> None:
    _, auth = make_key()
    _, other = make_key()
    hub = app.state.event_hub
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as http:
        jobs = [http.post("/v1/jobs", json=generate_body()).json() for _ in range(3)]
        # Given as many open streams as the key may hold
        with http.stream("GET", f"/v1/jobs/{jobs[0]['id']}/events") as first, \
                http.stream("GET", f"/v1/jobs/{jobs[1]['id']}/events") as second:
            streams = [sse_events(first), sse_events(second)]  # kept: a dropped reader closes its connection
            assert [next(s)[0] for s in streams] == ["status", "status"]
            # When the key opens one more stream, or waits on a job, Then 429 too_many_streams with Retry-After
            third = http.get(f"/v1/jobs/{jobs[2]['id']}/events")
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
            assert int(third.headers["Retry-After"]) >= 1
            waited = http.get(f"/v1/jobs/{jobs[2]['id']}", params={"wait": 5})
            assert waited.status_code == 429
            # and another key is not affected
            mine = httpx.post(f"{server_url}/v1/jobs", json=generate_body(), headers=other).json()
            assert httpx.get(f"{server_url}/v1/jobs/{mine['id']}", params={"wait": 0.1}, headers=other,
                             timeout=30).status_code == 200
        # Then closing the streams frees their places
        deadline = time.monotonic() + LIVENESS_S
        while hub.open_for(app.state.services.keys.authenticate(auth["Authorization"][7:]).id):
            assert time.monotonic() < deadline, "closed streams were not released"  # wallclock-ok: bounded wait, not a speed claim
            time.sleep(0.05)
        for job in jobs:
            http.post(f"/v1/jobs/{job['id']}/cancel")
        with http.stream("GET", f"/v1/jobs/{jobs[2]['id']}/events") as again:
            assert again.status_code == 200


def test_process_cap_and_slow_watchers_are_bounded() -> None:
    hub = EventHub("", push=False, max_streams=3, max_per_key=10, slow_after_s=-1.0, max_pending=4)

    async def scenario() -> None:
        watches = [hub.watch(f"key-{i}", job_ids=["j1"]) for i in range(3)]
        # a process holds at most max_streams watches
        with pytest.raises(TooManyStreams) as raised:
            hub.watch("key-x", job_ids=["j2"])
        assert raised.value.scope == "process"
        # a watcher that does not take its events is dropped (slow_after_s<0: any event finding it behind)
        hub.dispatch(f"{hub.prefix}ev:job:j1", json.dumps({"type": "status", "job_id": "j1", "status": "running"}))
        assert (await watches[0].wait(1)).events[0]["status"] == "running"
        hub.dispatch(f"{hub.prefix}ev:job:j1", json.dumps({"type": "progress", "job_id": "j1", "status": "running"}))
        hub.dispatch(f"{hub.prefix}ev:job:j1", json.dumps({"type": "progress", "job_id": "j1", "status": "running"}))
        assert (await watches[1].wait(1)).dropped and hub.dropped >= 2
        for w in watches:
            w.close()
        assert hub.open_streams == 0

    asyncio.run(scenario())


def test_committed_transitions_wake_a_watch(api_settings: Any, job_store: Any, owner_id: str) -> None:
    from storage.db import make_engine, make_session_factory
    from storage.jobs.store import JobStore
    from tests.support.storage import job as new_job

    sessions = make_session_factory(make_engine(api_settings))
    attach(sessions, RedisPublisher(api_settings.redis_url))
    store = JobStore(sessions)
    job = store.create(new_job(owner_id))
    hub = EventHub(api_settings.redis_url, push=True, max_streams=10, max_per_key=10)

    async def scenario() -> list[dict[str, Any]]:
        assert await hub.ready(LIVENESS_S)
        got: list[dict[str, Any]] = []
        with hub.watch(owner_id, job_ids=[job.id]) as watch:
            [claim] = await asyncio.to_thread(claim_job, store, job.id, "w")
            got += (await watch.wait(LIVENESS_S)).events
            await asyncio.to_thread(store.renew, [claim], 60)  # a lease renewal is not an event
            await asyncio.to_thread(store.set_progress, claim, 1, 4)
            got += (await watch.wait(LIVENESS_S)).events
            await asyncio.to_thread(store.complete, claim, [])
            got += (await watch.wait(LIVENESS_S)).events
        await hub.stop()
        return got

    got = asyncio.run(scenario())
    assert [(e["type"], e["status"]) for e in got] == [("status", "running"), ("progress", "running"),
                                                       ("status", "succeeded")]
    assert got[1]["step"] == 1 and got[1]["total"] == 4


def test_channels_are_scoped_to_the_redis_db(api_settings: Any) -> None:
    """PUBLISH ignores the db number: a deployment (or test session) on another db of the same server must not
    wake this one's watchers. Redis delivers one subscriber's messages in publish order, so the first event this
    hub sees after both publishes is the one from its own db."""
    from storage.jobs.events import channel_prefix

    own = api_settings.redis_url
    base, _, db = own.rpartition("/")
    other = f"{base}/{(int(db) % 15) + 1}"
    assert channel_prefix(own) != channel_prefix(other) and channel_prefix("redis://h:6379") == "unipic:0:"
    hub = EventHub(own, push=True, max_streams=10, max_per_key=10)

    async def scenario() -> list[dict[str, Any]]:
        assert await hub.ready(LIVENESS_S)
        with hub.watch("k", job_ids=["shared-id"]) as watch:
            event = {"type": "status", "job_id": "shared-id"}
            await asyncio.to_thread(RedisPublisher(other).publish, [{**event, "status": "running"}])
            await asyncio.to_thread(RedisPublisher(own).publish, [{**event, "status": "succeeded"}])
            got = (await watch.wait(LIVENESS_S)).events
        await hub.stop()
        return got

    assert [e["status"] for e in asyncio.run(scenario())][:1] == ["succeeded"]


@pytest.mark.system  # starts a private redis-server
def test_redis_restart_resyncs_every_watch(tmp_path: Any) -> None:
    from bench.stack import PrivateRedis

    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    hub = EventHub(redis.url, push=True, max_streams=10, max_per_key=10)

    async def scenario() -> None:
        assert await hub.ready(LIVENESS_S)
        with hub.watch("k", job_ids=["j"]) as watch:
            # When Redis restarts under the subscription
            await asyncio.to_thread(redis.restart)
            # Then the watch is told to resync, and once resubscribed, events flow again
            assert (await watch.wait(LIVENESS_S)).resync
            deadline = time.monotonic() + LIVENESS_S
            while hub.subscriptions < 2:
                assert time.monotonic() < deadline, "the hub did not resubscribe"  # wallclock-ok: bounded wait, not a speed claim
                await watch.wait(0.1)
            await asyncio.to_thread(RedisPublisher(redis.url).publish, [{"type": "status", "job_id": "j",
                                                                         "status": "running"}])
            wake = await watch.wait(LIVENESS_S)
            deadline = time.monotonic() + LIVENESS_S
            while not wake.events:  # a late resync may come first
                assert time.monotonic() < deadline, "the event was not heard"  # wallclock-ok: bounded wait, not a speed claim
                wake = await watch.wait(LIVENESS_S)
            assert wake.events[0]["status"] == "running"
        await hub.stop()

    try:
        asyncio.run(scenario())
    finally:
        redis.close()


def test_batch_stream_sends_each_item_once_then_done(server_url: str, make_key: Any, app: Any) -> None:
    services = app.state.services
    _, auth = make_key()
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as http:
        batch = http.post("/v1/batches", json=[{**generate_body(), "custom_id": f"c{i}"} for i in range(6)]).json()
        ids = [j.id for j in services.batches.jobs(batch["id"])]
        # Given one job already finished before the stream opens
        services.jobs.request_cancel(ids[0], None)
        got: list[tuple[str, dict[str, Any]]] = []
        with http.stream("GET", f"/v1/batches/{batch['id']}/events") as r:
            assert r.status_code == 200
            stream = sse_events(r)
            got.append(next(stream))
            # When the rest run and finish (one batch-mate claim, then one by one)
            claims = claim_job(services.jobs, ids[1], "w", max_items=8)
            for claim in claims:
                key = result_key(claim.job_id, claim.lease_token, 0, "png")
                services.objects.put(key, png_bytes(4, 4), content_type="image/png")
                services.jobs.complete(claim, [key])
            got += list(stream)
    names = [n for n, _ in got]
    items = [d for n, d in got if n == "item"]
    # Then every item arrives exactly once, with its custom_id and result URLs, and `done` comes last
    assert sorted(i["job_id"] for i in items) == sorted(ids)
    assert {i["custom_id"] for i in items} == {f"c{i}" for i in range(6)}
    assert all(i["result"]["images"][0]["url"] for i in items if i["status"] == "succeeded")
    assert names[-1] == "done" and names.count("done") == 1
    assert got[-1][1]["manifest_url"] and got[-1][1]["counts"]["succeeded"] == 5
    assert "counts" in names


def test_poll_mode_streams_and_waits_without_push(api_settings: Any, make_key: Any, app: Any) -> None:
    from api.app import create_app

    poll_app = create_app(api_settings.model_copy(update={"events_mode": "poll"}))
    assert not poll_app.state.event_hub.push
    services = poll_app.state.services
    _, auth = make_key()
    with serve_app(poll_app) as url, httpx.Client(base_url=url, headers=auth, timeout=30) as http:
        job = http.post("/v1/jobs", json=generate_body()).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            stream = sse_events(r)
            assert next(stream)[1]["status"] == "queued"
            [claim] = claim_job(services.jobs, job["id"], "w")
            assert next(stream)[1]["status"] == "running"
            services.jobs.fail(claim, "model_error", "boom")
            rest = list(stream)
        assert [n for n, _ in rest][-2:] == ["status", "done"]
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()["status"] == "failed"


def test_a_lost_message_is_covered_by_the_batched_reconciliation(server_url: str, make_key: Any, app: Any,
                                                                 api_settings: Any) -> None:
    from storage.db import make_engine, make_session_factory
    from storage.jobs.store import JobStore

    silent = JobStore(make_session_factory(make_engine(api_settings)))  # no publisher: its events are "lost"
    reconciler = app.state.reconciler
    _, auth = make_key()
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as http:
        job = http.post("/v1/jobs", json=generate_body()).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            stream = sse_events(r)
            assert next(stream)[1]["status"] == "queued"
            # When the job runs and fails through a store that publishes nothing
            [claim] = claim_job(silent, job["id"], "w")
            silent.fail(claim, "model_error", "boom")
            # Then the stream still ends: the reconciler's batched read found the row ahead and woke it
            rest = list(stream)
    assert [n for n, _ in rest][-2:] == ["status", "done"] and rest[-1][1]["status"] == "failed"
    assert reconciler.woken >= 1
