"""A gateway worker hears its jobs' cancel requests through one long-poll (`POST /v1/worker/cancels`, woken by the
API's cancel hints: `api.events.hub`) instead of reading them every sampling step: the route answers at once with
the worker's canceled jobs, or when one of them is canceled, never with another worker's; a newer poll of the
worker ends the older; without live events it answers at once and says it did not watch. The worker side
(`workers.transport.gateway_cancels`) chains polls, and a running set (whole or continuous) over the gateway
reads cancel requests once at its start and once per cancel heard. Real app, Postgres, Redis and S3."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gateway.remote import remote_jobs, remote_runner, routes_sent
from tests.support.jobs import make_job
from tests.support.waiting import wait_for
from workers.faults import FaultInjector

HELD_WAIT_S = 30.0  # a poll's longest wait: a poll answered sooner was answered by an event, not its wait


def _trusted(app: Any) -> None:
    wait_for(lambda: app.state.event_hub.trusted, "the hub's event subscription to be trusted", timeout=30)


def _claim(client: TestClient, headers: dict[str, str], worker: str, job_ids: list[str]) -> None:
    response = client.post("/v1/worker/claim", headers=headers,
                           json={"worker": worker, "max_items": len(job_ids), "wait_seconds": 0})
    assert response.status_code == 200, response.text
    assert sorted(j["job_id"] for j in response.json()["jobs"]) == sorted(job_ids)


def _poll(client: TestClient, headers: dict[str, str], worker: str, wait: float = 0.0,
          known: list[str] | None = None) -> dict[str, Any]:
    response = client.post("/v1/worker/cancels", headers=headers,
                           json={"worker": worker, "wait_seconds": wait, "known": known or []})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


class _Held:
    """A poll held in a thread; `answer` once it came back."""

    def __init__(self, client: TestClient, headers: dict[str, str], worker: str) -> None:
        self.answer: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(client, headers, worker), daemon=True)
        self.thread.start()

    def _run(self, client: TestClient, headers: dict[str, str], worker: str) -> None:
        self.answer = _poll(client, headers, worker, HELD_WAIT_S)


def _held_by_hub(app: Any, worker_id: str) -> bool:
    return app.state.event_hub.holds_cancel_poll(worker_id)


def test_a_cancel_poll_answers_the_workers_canceled_jobs_and_never_anothers(
    client: TestClient, app: Any, services: Any, make_token: Any, owner_id: str,
) -> None:
    _trusted(app)
    _, mine = make_token(name="cancels-a")
    _, theirs = make_token(name="cancels-b")
    # Given two jobs claimed by a worker and one claimed by a worker of the same name under another token
    a1, a2 = (make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1100 + i, tag="cp-a")
              for i in range(2))
    _claim(client, mine, "cp:1", [a1.id, a2.id])
    b = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1102, tag="cp-b")
    _claim(client, theirs, "cp:1", [b.id])
    # When the owner cancels one of the worker's jobs and the other worker's job
    services.jobs.request_cancel(a1.id, owner_id)
    services.jobs.request_cancel(b.id, owner_id)
    # Then the worker's poll answers at once with its own canceled job only, and says the gateway watches
    assert _poll(client, mine, "cp:1", HELD_WAIT_S) == {"cancel_requested": [a1.id], "watching": True}
    # And a job it says it knows of is not answered again (a probe: it does not wait)
    assert _poll(client, mine, "cp:1", 0.0, known=[a1.id]) == {"cancel_requested": [], "watching": True}


def test_a_held_poll_is_answered_by_a_cancel_of_its_workers_job_and_a_newer_poll_ends_it(
    client: TestClient, app: Any, services: Any, make_token: Any, owner_id: str,
) -> None:
    _trusted(app)
    record, headers = make_token(name="cancels-held")
    mine, other = (make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1110 + i, tag="cp-h")
                   for i in range(2))
    _claim(client, headers, "cp:2", [mine.id])
    _claim(client, headers, "cp:3", [other.id])
    # Given a poll of each worker held by the gateway
    polls = {name: _Held(client, headers, name) for name in ("cp:2", "cp:3")}
    worker_ids = {name: f"{_prefix(app, record)}{name}" for name in polls}
    for name, worker_id in worker_ids.items():
        wait_for(lambda w=worker_id: _held_by_hub(app, w), f"{name}'s poll to be held")
    # When the owner cancels the other worker's job
    services.jobs.request_cancel(other.id, owner_id)
    # Then only that worker's poll is answered (the hint names the worker running the job)
    wait_for(lambda: polls["cp:3"].answer is not None, "cp:3's poll to be answered")
    assert polls["cp:3"].answer == {"cancel_requested": [other.id], "watching": True}
    assert polls["cp:2"].answer is None and _held_by_hub(app, worker_ids["cp:2"])
    # And when its own job is canceled, the first worker's poll is answered with it
    services.jobs.request_cancel(mine.id, owner_id)
    wait_for(lambda: polls["cp:2"].answer is not None, "cp:2's poll to be answered")
    assert polls["cp:2"].answer == {"cancel_requested": [mine.id], "watching": True}

    # Given another held poll of the first worker, which knows of its canceled job
    again = _Held(client, headers, "cp:4")
    wait_for(lambda: _held_by_hub(app, f"{_prefix(app, record)}cp:4"), "cp:4's poll to be held")
    # When the same worker sends a newer poll
    assert _poll(client, headers, "cp:4", 0.0) == {"cancel_requested": [], "watching": True}
    # Then the older one is answered long before its wait ends: the newer covers the worker
    wait_for(lambda: again.answer is not None, "the superseded poll to end", timeout=HELD_WAIT_S / 2)
    assert again.answer == {"cancel_requested": [], "watching": True}


def _prefix(app: Any, record: Any) -> str:
    """The worker-id prefix of a token's workers (`api.gateway.auth`)."""
    from api.gateway.auth import WorkerCaller

    return WorkerCaller(record).prefix


def test_without_live_events_a_poll_answers_at_once_and_says_it_did_not_watch(
    migrated: Any, tokens: Any,
) -> None:
    from api.app import create_app

    polled = create_app(migrated.model_copy(update={"events_mode": "poll"}))
    _, plaintext = tokens.create("cancels-poll-mode")
    with TestClient(polled) as client:
        answer = _poll(client, {"Authorization": f"Bearer {plaintext}"}, "cp:5", HELD_WAIT_S)
    assert answer == {"cancel_requested": [], "watching": False}


def test_a_gateway_workers_polls_chain_hear_a_cancel_and_end_when_stopped(
    client: TestClient, app: Any, services: Any, make_token: Any, owner_id: str,
) -> None:
    from workers.transport.gateway_cancels import GatewayCancelPolls

    _trusted(app)
    record, headers = make_token(name="cancels-chain")
    jobs = remote_jobs(client, headers["Authorization"].split()[1], "cp:6")
    job = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1120, tag="cp-chain")
    assert [c.job_id for c in jobs.claim(1, 64 * 64, wait_seconds=0)] == [job.id]
    polls = GatewayCancelPolls(jobs.wait_for_cancels, wait_seconds=HELD_WAIT_S)
    heard: list[list[str] | None] = []
    polls.listen(heard.append)
    polls.start()
    try:
        # Given a chain of polls the gateway watches (a probe said so; the held poll counts from its sending)
        wait_for(lambda: polls.trusted_since is not None, "the polls to be trusted")
        # When the owner cancels the worker's job
        services.jobs.request_cancel(job.id, owner_id)
        # Then the listeners hear it, and it is kept for a watcher that asks later
        wait_for(lambda: heard == [[job.id]], "the cancel to be heard")
        assert polls.heard([job.id]) == {job.id}
        # And the next poll of the chain is held again (the known job is not answered twice)
        wait_for(lambda: _held_by_hub(app, f"{_prefix(app, record)}cp:6"), "the next poll to be held")
    finally:
        # And stopping ends the poll in flight at once (a probe supersedes it), not at its 30 s wait
        polls.close()
    assert not polls._thread.is_alive()


def test_cancel_polls_stop_while_no_batch_listens_and_resume_for_the_next(
    client: TestClient, app: Any, make_token: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.transport import gateway_cancels
    from workers.transport.gateway_cancels import GatewayCancelPolls

    monkeypatch.setattr(gateway_cancels, "LINGER_SECONDS", 0.0)
    _trusted(app)
    _, headers = make_token(name="cancels-idle")
    jobs = remote_jobs(client, headers["Authorization"].split()[1], "cp:7")
    polls = GatewayCancelPolls(jobs.wait_for_cancels, wait_seconds=1.0).start()
    heard: list[list[str] | None] = []
    try:
        # Given a worker's polls with no batch listening: they stop (an idle worker costs the gateway nothing)
        wait_for(lambda: polls.idle, "the polls to stop")
        answered = polls.polls
        # When a batch listens, they resume and are trusted again
        polls.listen(heard.append)
        wait_for(lambda: polls.trusted_since is not None, "the polls to be trusted")
        assert polls.polls > answered
        # And when it stops listening, they stop again, and nothing is trusted while they do
        polls.unlisten(heard.append)
        wait_for(lambda: polls.idle, "the polls to stop again")
        assert polls.trusted_since is None
    finally:
        polls.close()


@pytest.fixture(params=["whole", "continuous"])
def held_runner(client: TestClient, app: Any, migrated: Any, tiny_engine: Any, make_token: Any, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, list[str], Path]]:
    """A gateway worker whose batches hold after 20 steps until `release` exists; the routes it posts, in order."""
    _, headers = make_token(name=f"cancels-{request.param}")
    release = tmp_path / "release"
    settings = migrated.model_copy(update={"progress_interval_ms": 0, "worker_max_batch": 2,
                                           "worker_batching": request.param})
    jobs, runner = remote_runner(client, headers["Authorization"].split()[1], "cp:runner", settings, tiny_engine,
                                 FaultInjector(hold_file=str(release), hold_after_steps=20))
    sent = routes_sent(jobs)
    _trusted(app)
    yield jobs, runner, sent, release
    release.touch()
    runner.drain()


def test_a_running_batch_over_the_gateway_hears_a_cancel_without_reading_every_step(
    held_runner: tuple[Any, Any, list[str], Path], services: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.runner import progress
    from workers.transport import gateway_cancels

    # a direct worker's watcher would read every 10 ms in case a Redis hint was lost; a gateway poll re-reads when
    # it starts (here every 0.2 s), so the watcher reads only when it hears a cancel
    monkeypatch.setattr(progress, "HINTED_CHECK_SECONDS", 0.01)
    monkeypatch.setattr(gateway_cancels, "POLL_WAIT_SECONDS", 0.2)
    jobs, runner, sent, release = held_runner
    hints = jobs.cancel_hints()  # the runner's too (one per worker process)
    wait_for(lambda: hints.trusted_since is not None, "the cancel polls to be trusted")
    # Given a gateway worker running two 32-step jobs, held after 20 steps
    kept, canceled = (make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1130 + i, steps=32,
                               tag="cp-run") for i in range(2))
    claims = jobs.claim(2, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
    assert sorted(c.job_id for c in claims) == sorted([kept.id, canceled.id])
    thread = threading.Thread(target=runner.run_claims, args=(claims,), daemon=True)
    thread.start()
    wait_for(lambda: (services.jobs.get(kept.id).progress_step or 0) >= 20, "20 steps to run")
    polls = hints.polls
    wait_for(lambda: hints.polls >= polls + 3, "three more polls (each re-reads) while the batch is held")
    # Then in 20 steps and three polls it read cancel requests at most once (at its start): not once a step, and
    # not every HINTED_CHECK_SECONDS either
    assert sent.count("cancel-requests") <= 1, sent
    # When the owner cancels one of them while the batch is held
    services.jobs.request_cancel(canceled.id, owner_id)
    wait_for(lambda: canceled.id in hints.heard([canceled.id]), "the cancel to be heard")
    release.touch()
    thread.join(120)
    # Then that job ends canceled and the other succeeds, with no more reads (the poll's answer is one)
    assert services.jobs.get(canceled.id).status == "canceled"
    assert services.jobs.get(kept.id).status == "succeeded"
    assert sent.count("cancel-requests") <= 1, sent
