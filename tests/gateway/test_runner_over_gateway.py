"""The same `BatchRunner` (whole batches and continuous running sets) over the remote transport: jobs of all three kinds run through the gateway client
against the real app (in process), the tiny engine and the S3 server, and the gateway worker refuses to start
with direct credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gateway.remote import remote_jobs, remote_runner, routes_sent
from tests.support import REPO
from tests.support.jobs import decode, make_job
from tests.support.storage import add_owner
from tests.support.waiting import wait_for
from workers.faults import FaultInjector


@pytest.fixture(params=["whole", "continuous"])
def gateway_runner(client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any,
                   request: pytest.FixtureRequest) -> Iterator[Any]:
    _, headers = make_token(name="in-process")
    settings = migrated.model_copy(update={"progress_interval_ms": 0, "worker_max_batch": 8,
                                           "worker_batching": request.param})
    jobs, runner = remote_runner(client, headers["Authorization"].split()[1], "in-process:1", settings, tiny_engine)
    yield jobs, runner
    runner.drain()  # a look a continuous loop left in flight hands back what it took, as a worker's exit does


def test_all_three_kinds_succeed_through_the_gateway(
    gateway_runner: Any, services: Any, owner_id: str, object_store: Any,
) -> None:
    # Given one queued job of each kind
    jobs, runner = gateway_runner
    made = [make_job(services.jobs, services.objects, owner_id, kind, 64, seed=3)
            for kind in ("generate", "edit", "understand")]
    # When the runner claims and runs batches over the gateway until they are all done (its next claim is what
    # a continuous loop's last look took, if it took anything, as `unipic worker --gateway` claims)
    for _ in range(6):
        claims = runner.left_claims() or jobs.claim(8, 8 * 1024 * 1024, kinds=None, wait_seconds=0)
        if claims:
            runner.run_claims(claims)
        if all(services.jobs.get(j.id).terminal for j in made):
            break
    # Then each succeeded with a valid result in its own keys
    for job in made:
        done = services.jobs.get(job.id)
        assert done.status == "succeeded", (job.kind, done.error_code, done.error_message)
        assert all(key.startswith(f"results/{job.id}/") for key in done.result_keys)
        if job.kind == "understand":
            assert isinstance(done.result_text, str)
        else:
            assert decode(object_store, done.result_keys[0]).size == (64, 64)


def test_a_corrupted_upload_is_handed_back_not_completed(
    gateway_runner: Any, services: Any, owner_id: str,
) -> None:
    # Given a claimed job whose upload lands corrupted (a cut connection that delivered half the bytes)
    jobs, _ = gateway_runner
    job = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=5)
    claims = [c for c in jobs.claim(1, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0) if c.job_id == job.id]
    assert claims
    key = f"results/{job.id}/{claims[0].lease_token}/0.png"
    jobs.objects.put(key, b"\x89PNG\r\n\x1a\n half an image")
    # When the worker completes it
    ok = jobs.complete(claims[0], [key])
    # Then the server refuses it and the job is back in the queue, attempts unchanged, for any worker
    assert not ok
    back = services.jobs.get(job.id)
    assert back.status == "queued" and back.attempts == 0 and back.result_keys is None


@pytest.mark.parametrize("variable", ["UNIPIC_DATABASE_URL", "UNIPIC_BROKER_URL", "UNIPIC_STORAGE_URL",
                                      "AWS_SECRET_ACCESS_KEY"])
def test_gateway_worker_refuses_direct_credentials(variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIPIC_", "AWS_"))}
    env.update({variable: "postgresql://u:p@db/x", "PYTHONPATH": str(REPO)})
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--gateway", "https://api.example", "--token", "wk_x"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and "--gateway" in result.stderr


def test_a_full_set_over_the_gateway_takes_another_keys_job_over_the_cap(
    client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any, services: Any, owner_id: str,
    session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.runner.continuous import _Loop

    retired: list[str] = []
    steps: list[int] = []
    retire, run_step = _Loop._retire, _Loop._run_step

    def observed_retire(loop: _Loop, m: Any, images: Any, call_size: int) -> None:  # observe, not change
        retired.append(m.id)
        retire(loop, m, images, call_size)

    def observed_run_step(loop: _Loop, rs: Any, ids: set[str], *decode: bool) -> Any:
        steps.append(len(ids))
        return run_step(loop, rs, ids, *decode)

    monkeypatch.setattr(_Loop, "_retire", observed_retire)
    monkeypatch.setattr(_Loop, "_run_step", observed_run_step)
    # Given a continuous gateway worker whose set of two rows is full of tenant A's jobs, held after one step
    release = tmp_path / "release"
    jobs, runner = _continuous_gateway_runner(client, migrated, tiny_engine, make_token,
                                              FaultInjector(hold_file=str(release), hold_after_steps=1))
    bulk = [make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=970 + i, steps=8,
                     tag="gw-full") for i in range(2)]
    claims = jobs.claim(2, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
    assert sorted(c.job_id for c in claims) == sorted(j.id for j in bulk)
    looks: list[Any] = []  # the futures of the worker's looks (`ContinuousRunner.look_aside`), observed
    look_aside = runner.look_aside

    def observed_look(claim: Any) -> Any:
        looks.append(look_aside(claim))
        return looks[-1]

    monkeypatch.setattr(runner, "look_aside", observed_look)
    thread = threading.Thread(target=runner.run_claims, args=(claims,))
    thread.start()
    # When tenant B queues one job while the set is held
    late = make_job(services.jobs, services.objects, add_owner(session_factory), "generate", 64, seed=979, steps=8,
                    tag="gw-full-b")
    # Then the worker's newcomer look (off the sampling thread, the set still held) claims it, and has its answer
    # before the set goes on (its job's status says running as soon as the claim commits; under load the answer
    # came back only after the bulk's last step, and the job was the worker's next claim instead)
    wait_for(lambda: services.jobs.get(late.id).status == "running", "the newcomer look to claim B's job")
    wait_for(lambda: any(f.done() and f.result() is not None and late.id in {c.job_id for c in f.result().claims}
                         for f in list(looks)), "the newcomer look's answer")
    release.touch()
    thread.join(120)
    runner.drain()
    # And B's job joined the full set and finished first, and no step ran more than two items
    done = services.jobs.get_many([*(j.id for j in bulk), late.id])
    assert all(j.status == "succeeded" for j in done), [(j.id, j.status, j.error_code) for j in done]
    assert retired[0] == late.id and sorted(retired[1:]) == sorted(j.id for j in bulk)
    assert max(steps) == 2


def test_the_look_a_loop_leaves_in_flight_is_the_workers_next_claim(
    client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any, services: Any, owner_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.runner.continuous as continuous

    monkeypatch.setattr(continuous, "REMOTE_LOOK_SECONDS", 25.0)  # the look outlasts the loop whatever the load
    # Given a continuous gateway worker that ran one job: while it sampled, it long-polled for more (off the
    # sampling thread), and the loop ended with that look in flight
    jobs, runner = _continuous_gateway_runner(client, migrated, tiny_engine, make_token, FaultInjector())
    first = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=981, tag="gw-left")
    runner.run_claims(jobs.claim(1, 64 * 64, kinds=["generate"], wait_seconds=0))
    assert services.jobs.get(first.id).status == "succeeded" and runner.left_looks
    # When a job arrives after the loop ended
    late = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=982, tag="gw-left")
    # Then the look takes it and hands it to the worker as its next claim (not back to the queue)
    left = runner.left_claims()
    assert [c.job_id for c in left] == [late.id] and services.jobs.get(late.id).status == "running"
    monkeypatch.setattr(continuous, "REMOTE_LOOK_SECONDS", 0.0)  # this loop's look ends at once (drain waits)
    runner.run_claims(left)
    runner.drain()
    assert services.jobs.get(late.id).status == "succeeded"


def test_claims_tag_each_key_opaquely_and_a_newcomer_claim_passes_over_the_held_keys(
    client: TestClient, migrated: Any, make_token: Any, services: Any, owner_id: str, session_factory: Any,
) -> None:
    _, headers = make_token(name="tags")
    jobs = remote_jobs(client, headers["Authorization"].split()[1], "tags:1")
    other = add_owner(session_factory)
    # Given tenant A's three queued jobs and then one of tenant B, all of one queue
    a_jobs = [make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=990 + i, tag="gw-tags")
              for i in range(3)]
    b_job = make_job(services.jobs, services.objects, other, "generate", 64, seed=995, tag="gw-tags-b")
    # When a worker claims one of A's jobs, then asks for a newcomer of that queue passing over what it holds
    first = jobs.claim(1, 64 * 64, kinds=["generate"], wait_seconds=0)
    held = jobs.get_many([c.job_id for c in first])[0]
    assert held.id in {j.id for j in a_jobs}
    newcomer = jobs.claim_newcomer(held.queue, "tags:1", 30.0, 64 * 64, [held.id])
    # Then it gets B's job (A's two queued jobs are passed over), and the two jobs carry different tags, neither
    # of them a key's id; the next claim still finds A's jobs (the newcomer look marked no queue empty)
    assert [c.job_id for c in newcomer] == [b_job.id]
    got = jobs.get_many([held.id, b_job.id])
    assert got[0].owner_id != got[1].owner_id and {got[0].owner_id, got[1].owner_id}.isdisjoint({owner_id, other})
    assert got[0].created_at <= got[1].created_at
    again = jobs.claim(2, 2 * 64 * 64, kinds=["generate"], wait_seconds=0)
    assert sorted(c.job_id for c in again) == sorted(j.id for j in a_jobs if j.id != held.id)
    tags = {j.owner_id for j in jobs.get_many([c.job_id for c in again])}
    assert tags == {got[0].owner_id}
    # And of a held key, a newcomer claim takes only a job above every priority held of it (A's interactive call
    # beside its own bulk), passing over A's job of the held priority
    level = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=993, tag="gw-tags")
    urgent = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=994, priority=5, tag="gw-tags")
    assert [c.job_id for c in jobs.claim_newcomer(held.queue, "tags:1", 30.0, 64 * 64, [held.id])] == [urgent.id]
    assert jobs.claim_newcomer(held.queue, "tags:1", 30.0, 64 * 64, [held.id, urgent.id]) == []
    assert [c.job_id for c in jobs.claim(1, 64 * 64, kinds=["generate"], wait_seconds=0)] == [level.id]
    # And a newcomer claim of a queue the token does not serve is refused with a code
    refused = client.post("/v1/worker/claim", headers=headers, json={
        "worker": "tags:1", "queue": "unipic.gpu.understand.nowhere", "skip_owners_of": [held.id], "wait_seconds": 0})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "queue_not_allowed"
    # And a newcomer look naming no queue spans the token's queues (B's question in the understand queue), which
    # only the gateway knows: a direct store's newcomer claim must name its queue
    ask = make_job(services.jobs, services.objects, other, "understand", 64, seed=996, tag="gw-tags-ask")
    assert [c.job_id for c in jobs.claim_newcomer(None, "tags:1", 30.0, 64 * 64, [held.id])] == [ask.id]
    with pytest.raises(ValueError, match="names its queue"):
        services.jobs.claim_newcomer(None, "tags:1", 30.0, 64 * 64, [held.id])


def _continuous_gateway_runner(client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any,
                               faults: Any) -> tuple[Any, Any]:
    _, headers = make_token(name="full-set")
    settings = migrated.model_copy(update={"progress_interval_ms": 0, "worker_max_batch": 2,
                                           "worker_batching": "continuous"})
    return remote_runner(client, headers["Authorization"].split()[1], "full-set:1", settings, tiny_engine, faults)


def test_a_gateway_workers_newcomer_long_poll_never_keeps_its_freed_rows_empty(
    client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any, services: Any, owner_id: str,
    session_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.runner.continuous as continuous

    monkeypatch.setattr(continuous, "REMOTE_LOOK_SECONDS", 25.0)  # the looks outlast the loop whatever the load
    # Given a continuous gateway worker of two rows running two of tenant A's four 2-step jobs: its set is full, so
    # it long-polls for a job of another key (none is queued)
    jobs, runner = _continuous_gateway_runner(client, migrated, tiny_engine, make_token, FaultInjector())
    bulk = [make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1000 + i, steps=2,
                     tag="gw-refill") for i in range(4)]
    first = jobs.claim(2, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
    claims_of_rows: list[tuple[str, int]] = []  # (thread, jobs taken) of each claim not for a newcomer
    claim = jobs.claim

    def observed(*args: Any, **kwargs: Any) -> Any:
        taken = claim(*args, **kwargs)
        if not kwargs.get("skip_owners_of"):
            claims_of_rows.append((threading.current_thread().name, len(taken)))
        return taken

    monkeypatch.setattr(jobs, "claim", observed)
    try:
        # When the worker runs them, then its next claim as `unipic worker --gateway` does: what its looks took,
        # if the loop ended before the look that claimed A's other two jobs returned (a slow gateway)
        runner.run_claims(first)
        if not all(services.jobs.get(j.id).status == "succeeded" for j in bulk):
            runner.run_claims(runner.left_claims())

        # Then the rows the first two freed were claimed off the sampling thread while the newcomer long-poll
        # waited (the sampling thread's own claims, as each loop ended, found nothing), and A's jobs all ran
        sampling = threading.current_thread().name
        assert sum(n for thread, n in claims_of_rows if thread != sampling) == 2, claims_of_rows
        assert all(n == 0 for thread, n in claims_of_rows if thread == sampling), claims_of_rows
        assert all(services.jobs.get(j.id).status == "succeeded" for j in bulk)
        # And tenant B's job, queued after the loop, is taken by a look it left and is the worker's next claim
        late = make_job(services.jobs, services.objects, add_owner(session_factory), "generate", 64, seed=1009,
                        tag="gw-refill-b")
        left = runner.left_claims()
        assert [c.job_id for c in left] == [late.id]
        monkeypatch.setattr(continuous, "REMOTE_LOOK_SECONDS", 0.0)  # this loop's own looks end at once
        runner.run_claims(left)
        assert services.jobs.get(late.id).status == "succeeded"
        # And a look still waiting, adopted by that loop and left again, takes the next job; a worker that stops
        # hands it back
        last = make_job(services.jobs, services.objects, add_owner(session_factory), "generate", 64, seed=1010,
                        tag="gw-refill-c")
    finally:
        make_job(services.jobs, services.objects, add_owner(session_factory), "generate", 64, seed=1011,
                 tag="gw-refill-d")  # whatever still waits takes a job and ends: the worker can stop now
        runner.drain()
    assert services.jobs.get(last.id).status == "queued"


@pytest.mark.parametrize("heard_by", ["cancel polls", "reads"])
def test_a_gateway_workers_row_freed_by_a_cancel_is_taken_by_the_next_queued_job_at_the_very_next_step(
    client: TestClient, app: Any, migrated: Any, tiny_engine: Any, make_token: Any, services: Any, owner_id: str,
    monkeypatch: pytest.MonkeyPatch, heard_by: str,
) -> None:
    from tests.support.jobs import make_jobs
    from tests.support.running_sets import CancelsDuringAStep
    from workers.transport.gateway_cancels import GatewayCancelPolls

    wait_for(lambda: app.state.event_hub.trusted, "the hub's event subscription to be trusted", timeout=30)
    # Given a continuous gateway worker of two rows running two 6-step jobs, a third of the same key queued; it
    # hears cancels through its cancel polls, trusted, or finds them by its watcher's reads (about one a step:
    # polls not trusted yet, or a gateway without them; here none is made)
    if heard_by == "reads":
        monkeypatch.setattr(GatewayCancelPolls, "_run", lambda self: None)
    jobs, runner = _continuous_gateway_runner(client, migrated, tiny_engine, make_token, FaultInjector())
    kept, victim, waiting = make_jobs(services.jobs, services.objects, owner_id, "generate", 64, [1200, 1201, 1202],
                                      steps=6, tag=f"gw-cancel-row-{heard_by}")
    hints = jobs.cancel_hints()
    if heard_by == "cancel polls":
        wait_for(lambda: hints.trusted_since is not None, "the cancel polls to be trusted")
    looks: list[Any] = []  # the claims the loop begins off the sampling thread, from the cancel on
    look_aside = runner.look_aside

    def observed(claim: Any) -> Any:
        future = look_aside(claim)
        looks.append(future)
        return future

    def took_waiting() -> bool:
        return any(f.done() and f.result() is not None and waiting.id in {c.job_id for c in f.result().claims}
                   for f in list(looks))

    def cancel() -> None:  # the owner cancels; the worker hears it or reads it, mid-step
        looks.clear()
        services.jobs.request_cancel(victim.id, owner_id)
        if heard_by == "cancel polls":
            wait_for(lambda: hints.heard([victim.id]), "the worker to hear the cancel")
        # the claim of the row it frees was begun when the cancel was heard and answers while the step runs
        wait_for(took_waiting, "a claim begun mid-step to take the queued job")

    runner.look_aside = observed
    runner.engine = engine = CancelsDuringAStep(runner.engine, cancel)
    first = jobs.claim(2, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
    assert sorted(c.job_id for c in first) == sorted([kept.id, victim.id])
    try:
        # When the owner cancels one of the running jobs during the set's second step
        runner.run_claims(first)
    finally:
        runner.drain()

    # Then the canceled job left after that step, and the queued one ran in its row at the very next step
    assert engine.steps[:2] == [{kept.id, victim.id}] * 2
    assert engine.steps[2] == {kept.id, waiting.id}, engine.steps
    done = {j.id: j for j in services.jobs.get_many([kept.id, victim.id, waiting.id])}
    assert done[victim.id].status == "canceled" and not services.objects.page(f"results/{victim.id}/")
    assert done[kept.id].status == "succeeded" and done[waiting.id].status == "succeeded"


def test_a_gateway_worker_reports_a_steps_progress_in_one_request(
    client: TestClient, make_token: Any, services: Any, owner_id: str,
) -> None:
    _, headers = make_token(name="progress-many")
    jobs = remote_jobs(client, headers["Authorization"].split()[1], "progress:1")
    # Given a gateway worker holding two jobs of one step count
    for i in range(2):
        make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1010 + i, steps=4, tag="gw-many")
    claims = jobs.claim(2, 2 * 64 * 64, kinds=["generate"], wait_seconds=0)
    assert len(claims) == 2
    sent = routes_sent(jobs)  # which routes the reports take
    # When it reports a step of both
    held = jobs.set_progress_many([(c, 3, 4) for c in claims])
    # Then one request wrote both
    assert sent == ["progress-many"] and held == {c.job_id for c in claims}
    assert [(j.progress_step, j.progress_total) for j in services.jobs.get_many([c.job_id for c in claims])] == [
        (3, 4), (3, 4)]
    services.jobs.release(claims)
