"""A stopping API process ends the requests it holds (`EventHub.drain`, run by `api.draining` on SIGTERM before
uvicorn waits for open requests): an event stream closes, a `?wait=` answers the job as it is, a gateway claim
long-poll answers empty and a cancel poll answers "not watching", each long before its own wait; a request that
comes after that ends at once too. Real app (its own, drained for good: module scope), Postgres and Redis;
`tests/cli/test_up.py` stops a real process with an open stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from api.gateway.auth import WorkerCaller
from storage.routing import gpu_queues
from tests.support.jobs import make_job
from tests.support.waiting import wait_for

HELD_S = 30.0  # each held request's own wait: the longest the gateway allows; ended by the drain far sooner


class _Held:
    """A request run in a thread; `answer` and `seconds` once it came back."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.answer: Any = None
        self.seconds: float | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        started = time.monotonic()
        self.answer = call()
        self.seconds = time.monotonic() - started

    def join(self) -> Any:
        self.thread.join(timeout=2 * HELD_S)
        assert self.seconds is not None, "the request is still held"
        return self.answer


def _stream(client: TestClient, headers: dict[str, str], job_id: str, opened: threading.Event) -> list[str]:
    """The event names of a job's stream until it ends; `opened` is set once the first one arrived."""
    names = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
                opened.set()
    return names


def test_a_stopping_api_ends_held_streams_waits_claims_and_cancel_polls_at_once(
    client: TestClient, app: Any, services: Any, make_token: Any,
) -> None:
    hub = app.state.event_hub
    wait_for(lambda: hub.trusted, "the hub's event subscription to be trusted", timeout=30)
    key, plaintext = services.keys.create("draining")
    headers = {"Authorization": f"Bearer {plaintext}"}
    token, worker = make_token(name="draining", kinds=["understand"])
    job = make_job(services.jobs, services.objects, key.id, "generate", 64, seed=4100, tag="drain")
    # Given: a client following a queued job's events, another waiting for it, a gateway worker's claim
    # long-poll on its empty queues and its cancel poll, all held by this process
    opened = threading.Event()
    stream = _Held(lambda: _stream(client, headers, job.id, opened))
    wait_for(opened.is_set, "the stream's first event")
    waiting = _Held(lambda: client.get(f"/v1/jobs/{job.id}", params={"wait": 2 * HELD_S}, headers=headers))
    claim = _Held(lambda: client.post("/v1/worker/claim", headers=worker, json={
        "worker": "drain:1", "kinds": ["understand"], "max_items": 1, "wait_seconds": HELD_S}))
    cancels = _Held(lambda: client.post("/v1/worker/cancels", headers=worker, json={
        "worker": "drain:1", "wait_seconds": HELD_S}))
    queues = gpu_queues(["understand"], 4096 * 4096)
    wait_for(lambda: hub.open_streams == 2 and any(hub.waiting(q) for q in queues)
             and hub.holds_cancel_poll(WorkerCaller(token).worker_id("drain:1")), "the requests to be held")

    # When: the process begins to stop
    assert client.portal is not None
    client.portal.call(hub.drain)

    # Then: the stream ends (after its status, without a `done`: the job is not finished), the wait answers the
    # queued job, the claim answers nothing and the cancel poll says it no longer watches, none after its wait
    assert stream.join() == ["status"]
    answer = waiting.join()
    assert answer.status_code == 200 and answer.json()["status"] == "queued"
    assert claim.join().status_code == 200 and claim.answer.json()["jobs"] == []
    assert cancels.join().json() == {"cancel_requested": [], "watching": False}
    for held in (stream, waiting, claim, cancels):
        # not a speed claim: each would end on its own only after its 30-60 s wait, which no answer here gives
        # apart from the time (a claim's and a wait's answers look the same either way)
        assert held.seconds is not None and held.seconds < HELD_S  # wallclock-ok: ended by the drain, not its wait
    assert services.jobs.get(job.id).status == "queued"  # nothing was claimed or changed by stopping

    # And: what comes after the drain ends at once (its stream with the job's status; its poll not watching)
    late = threading.Event()
    assert _stream(client, headers, job.id, late) == ["status"]
    answer = client.post("/v1/worker/cancels", headers=worker, json={"worker": "drain:1", "wait_seconds": HELD_S})
    assert json.loads(answer.text) == {"cancel_requested": [], "watching": False}

