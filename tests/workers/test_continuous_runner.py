"""The continuous runner in this process (the real store, S3 and tiny engine, without Celery): an item past its
own time limit fails `timeout` at the next step, and an item whose lease is lost leaves the set and writes
nothing. Faults are injected (a store that stops granting renewals, a file gate holding steps)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import make_job, make_jobs
from tests.support.running_sets import ActsDuringSteps, CancelsDuringAStep, Forwarded, WrappedSets
from tests.support.storage import add_owner
from tests.support.waiting import wait_for
from workers.faults import FaultInjector
from workers.metrics import job_labels
from workers.runner.leases import LeaseKeeper


def test_an_item_past_its_time_limit_fails_timeout_and_writes_nothing(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    runner = make_runner(worker_batching="continuous", time_limit_floor_seconds=1e-9,
                         time_limit_seconds_per_megapixel_step=1e-9)
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=930, steps=4, tag="cont-limit")
    assert runner.run(job.id) == 1
    runner.drain()
    done = job_store.get(job.id)
    assert done.status == "failed" and done.error_code == "timeout"
    assert not object_store.page(f"results/{job.id}/")


def test_an_item_whose_lease_is_lost_leaves_the_set_and_writes_nothing(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, tmp_path: Path, monkeypatch: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a set held after its first step, and a store that stops granting renewals (the sweeper took the job)
    release = tmp_path / "release"
    runner = make_runner(FaultInjector(hold_file=str(release), hold_after_steps=1), worker_batching="continuous",
                         lease_seconds=0.3)
    refused = threading.Event()
    renew_now = LeaseKeeper.renew_now

    def observed_renew_now(keeper: LeaseKeeper) -> None:  # observe: the keeper has recorded the loss
        renew_now(keeper)
        if keeper.lost():
            refused.set()

    monkeypatch.setattr(job_store, "renew", lambda claims, lease_seconds: [])
    monkeypatch.setattr(LeaseKeeper, "renew_now", observed_renew_now)
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=931, steps=4, tag="cont-lease")
    served: list[int] = []
    thread = threading.Thread(target=lambda: served.append(runner.run(job.id)))
    thread.start()

    # When a renewal is refused while the set is held, and the set goes on
    assert refused.wait(30)
    caplog.set_level(logging.WARNING, logger="workers.runner.continuous")
    release.touch()
    thread.join(60)
    runner.drain()

    # Then the item left the set at the next step, without completing or writing anything
    assert served == [1]
    assert f"job {job.id}: lease lost; dropped without writing" in caplog.text
    left = job_store.get(job.id)
    assert left.status == "running" and left.result_keys is None
    assert not object_store.page(f"results/{job.id}/")


def _newcomer_joins_a_held_set(runner: Any, release: Path, job_store: Any, object_store: Any, owner_id: str,
                               session_factory: Any, publishing_store: Any, seed: int, tag: str,
                               same_key_priority: int | None = None) -> tuple[list[Any], Any]:
    """Tenant A's two 8-step jobs run until the set is held after two steps; then tenant B (or A itself, at
    `same_key_priority`) queues one job of as many steps through a store that publishes queue wake-ups (as the
    API's does), the worker hears it, the set is released and runs to the end. Returns A's jobs and the new one."""
    bulk = [make_job(job_store, object_store, owner_id, "generate", 64, seed=seed + i, steps=8, tag=tag)
            for i in range(2)]
    thread = threading.Thread(target=lambda: runner.run(bulk[0].id))
    thread.start()
    wait_for(lambda: all((job_store.get(j.id).progress_step or 0) >= 2 for j in bulk), "A's set to take two steps")
    assert runner.wakeups is not None and runner.wakeups.listening.is_set()
    heard = runner.wakeups.heard(bulk[0].queue)
    if same_key_priority is None:
        late = make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64,
                        seed=seed + 9, steps=8, tag=f"{tag}-b")
    else:
        late = make_job(publishing_store, object_store, owner_id, "generate", 64, seed=seed + 9, steps=8,
                        priority=same_key_priority, tag=tag)
    wait_for(lambda: runner.wakeups.heard(bulk[0].queue) > heard, "the worker to hear the wake-up")
    release.touch()
    thread.join(120)
    runner.drain()
    return bulk, late


def _retirements(monkeypatch: Any) -> list[str]:
    """The ids the running loops retire, in order (observed, not changed)."""
    from workers.runner.continuous import _Loop

    retired: list[str] = []
    retire = _Loop._retire

    def observed_retire(loop: _Loop, m: Any, finished: Any, call_size: int) -> None:
        retired.append(m.id)
        retire(loop, m, finished, call_size)

    monkeypatch.setattr(_Loop, "_retire", observed_retire)
    return retired


def test_a_less_served_keys_job_runs_its_steps_alone_while_the_bulk_pauses(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any, tmp_path: Path,
    monkeypatch: Any, publishing_store: Any,
) -> None:
    from workers.runner import continuous

    retired = _retirements(monkeypatch)
    # (a loop that polls claims at most every ADMIT_EVERY_SECONDS; one that hears a job arrive claims it at once,
    # however recent its last claim: CI once saw A finish alone before B's claim was due)
    monkeypatch.setattr(continuous, "ADMIT_EVERY_SECONDS", 30.0)
    # Given tenant A's two jobs in a set held after two steps, on a worker that runs a less-served key's job
    # with no companions
    release = tmp_path / "release"
    runner = make_runner(FaultInjector(hold_file=str(release), hold_after_steps=1), worker_batching="continuous",
                         worker_step_companions=0)
    # When tenant B queues one job of as many steps (the worker hears the queue's wake-up) and the set goes on
    bulk, late = _newcomer_joins_a_held_set(runner, release, job_store, object_store, owner_id, session_factory,
                                            publishing_store, seed=940, tag="cont-sched")

    # Then B's job joined and finished first: A's items paused for its steps (forced in only against starvation)
    done = {j.id: j for j in job_store.get_many([*(j.id for j in bulk), late.id])}
    assert all(j.status == "succeeded" for j in done.values())
    assert retired[0] == late.id and sorted(retired[1:]) == sorted(j.id for j in bulk)


def test_an_understand_job_queued_mid_decode_joins_at_the_next_token_and_reads_as_alone(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any, tmp_path: Path,
    monkeypatch: Any, publishing_store: Any,
) -> None:
    retired = _retirements(monkeypatch)
    # Given an understand job of 24 tokens decoding in a set held after its second token
    release = tmp_path / "release"
    runner = make_runner(FaultInjector(hold_file=str(release), hold_after_steps=2), worker_batching="continuous")
    first = make_job(job_store, object_store, owner_id, "understand", 64, seed=955, max_new_tokens=24, tag="cont-ask")
    thread = threading.Thread(target=lambda: runner.run(first.id))
    thread.start()
    wait_for(lambda: (job_store.get(first.id).progress_step or 0) >= 2, "the first job to choose two tokens")
    assert runner.wakeups is not None and runner.wakeups.listening.is_set()
    heard = runner.wakeups.heard(first.queue)

    # When another key queues a 6-token question (the worker hears the wake-up) and the set goes on
    late = make_job(publishing_store, object_store, add_owner(session_factory), "understand", 64,
                    seed=956, max_new_tokens=6, tag="cont-ask-b")
    wait_for(lambda: runner.wakeups.heard(first.queue) > heard, "the worker to hear the wake-up")
    release.touch()
    thread.join(120)
    runner.drain()

    # Then it joined the running decode (started before the first finished) and finished first
    done = {j.id: j for j in job_store.get_many([first.id, late.id])}
    assert all(j.status == "succeeded" for j in done.values()), [(j.status, j.error_message) for j in done.values()]
    assert done[late.id].started_at < done[first.id].finished_at and retired == [late.id, first.id]

    # And each answer is the one the same question gets alone
    for job in (first, late):
        alone = make_job(job_store, object_store, owner_id, "understand", 64, seed=job.params["seed"],
                         max_new_tokens=job.params["max_new_tokens"], tag="cont-ask-alone")
        assert runner.run(alone.id) == 1
        runner.drain()
        assert job_store.get(alone.id).result_text == done[job.id].result_text


def test_a_shutdown_that_cannot_wait_hands_live_items_back_and_claims_nothing_more(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, tmp_path: Path
) -> None:
    # Given a set of two jobs held after two steps, on a worker with no shutdown grace, and a third job queued
    release = tmp_path / "release"
    runner = make_runner(FaultInjector(hold_file=str(release), hold_after_steps=1), grace_seconds=0.0,
                         worker_batching="continuous", worker_max_batch=3)
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=950 + i, steps=6, tag="cont-stop")
            for i in range(2)]
    thread = threading.Thread(target=lambda: runner.run(jobs[0].id))
    thread.start()
    wait_for(lambda: all((job_store.get(j.id).progress_step or 0) >= 2 for j in jobs), "the set to take two steps")
    waiting = make_job(job_store, object_store, owner_id, "generate", 64, seed=952, steps=6, tag="cont-stop")

    # When shutdown is requested and the set goes on
    runner.shutdown.request()
    release.touch()
    thread.join(60)
    runner.drain()

    # Then both live items are back in the queue on their first attempt with nothing written, and nothing more
    # was claimed
    for job in job_store.get_many([j.id for j in jobs]):
        assert job.status == "queued" and job.attempts == 0 and not job.result_keys, job
        assert not object_store.page(f"results/{job.id}/")
    assert job_store.get(waiting.id).status == "queued"


def test_a_loop_over_a_backlog_takes_turns_with_the_workers_other_queues(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.jobs import make_jobs

    # Given a backlog of four generate jobs for a worker that runs two at a time, and an edit job and an
    # understand job waiting in two of the worker's other queues; the claims of other queues observed (whether
    # the queue held anything a claim could take or tidy, as the claim began)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    bulk = make_jobs(job_store, object_store, owner_id, "generate", 64, [960, 961, 962, 963], steps=4,
                     tag="cont-elsewhere")
    edit = make_job(job_store, object_store, owner_id, "edit", 64, seed=964, steps=4, tag="cont-elsewhere")
    ask = make_job(job_store, object_store, owner_id, "understand", 64, seed=965, tag="cont-elsewhere")
    elsewhere: list[tuple[str, bool]] = []
    claim_next = job_store.claim_next

    def observed(queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue != bulk[0].queue:
            elsewhere.append((queue, queue in job_store.queues_worth_claiming([queue])))
        return claim_next(queue, *args, **kwargs)

    monkeypatch.setattr(job_store, "claim_next", observed)

    # When the worker serves one message of the generate queue
    runner.run(bulk[0].id)
    runner.drain()

    # Then the running loop took both between its steps, before the backlog's last job started
    done = {j.id: j for j in job_store.get_many([*(j.id for j in bulk), edit.id, ask.id])}
    assert all(j.status == "succeeded" for j in done.values()), [(j.kind, j.status, j.error_code, j.error_message) for j in done.values()]
    last = max(done[j.id].started_at for j in bulk)
    assert done[edit.id].started_at < last and done[ask.id].started_at < last
    # and it made no claim of an idle queue of the worker's (one read tells which are worth a claim)
    assert {edit.queue, ask.queue} <= {queue for queue, _ in elsewhere}
    assert all(worth for _, worth in elsewhere), elsewhere


def test_a_job_released_under_the_loop_and_claimed_again_starts_over_on_its_new_lease(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    from tests.support.jobs import make_jobs

    # Given a running set of two jobs with short leases and slow steps
    runner = make_runner(FaultInjector(step_delay_seconds=0.25), lease_seconds=0.6, worker_batching="continuous")
    kept, taken = make_jobs(job_store, object_store, owner_id, "generate", 64, [85, 86], steps=8, tag="reclaimed")
    thread = threading.Thread(target=runner.run, args=(kept.id,))
    thread.start()

    # When another party hands one of them back to the queue under the worker (as the sweeper would)
    wait_for(lambda: job_store.get(taken.id).status == "running", "the set to start")
    first = job_store.get(taken.id).claim
    assert job_store.release([first]) == 1
    thread.join(timeout=120)
    runner.drain()

    # Then the loop claimed it again and it succeeded once, on its new lease: nothing under the first lease
    done = {j.id: j for j in job_store.get_many([kept.id, taken.id])}
    assert done[kept.id].status == "succeeded" and done[taken.id].status == "succeeded", done
    assert all(first.lease_token not in key for key in done[taken.id].result_keys)
    assert not object_store.page(f"results/{taken.id}/{first.lease_token}/")


@pytest.mark.parametrize("same_key_priority", [None, 5], ids=["another key's job", "the key's own urgent job"])
def test_a_full_set_takes_a_woken_newcomers_job_over_the_cap_and_no_step_runs_more_than_the_cap(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any, publishing_store: Any,
    tmp_path: Path, monkeypatch: Any, same_key_priority: int | None,
) -> None:
    from workers.runner.continuous import _Loop

    retired = _retirements(monkeypatch)
    step_sizes: list[int] = []
    run_step = _Loop._run_step

    def observed_run_step(loop: _Loop, rs: Any, ids: set[str], *decode: bool) -> Any:  # observe: items per step
        step_sizes.append(len(ids))
        return run_step(loop, rs, ids, *decode)

    monkeypatch.setattr(_Loop, "_run_step", observed_run_step)
    # Given tenant A's two jobs filling a set of two rows, held after two steps
    release = tmp_path / "release"
    runner = make_runner(FaultInjector(hold_file=str(release), hold_after_steps=1), worker_batching="continuous",
                         worker_max_batch=2)
    # When tenant B queues one job (or A one above its two's priority) and the worker has heard the wake-up
    bulk, late = _newcomer_joins_a_held_set(runner, release, job_store, object_store, owner_id, session_factory,
                                            publishing_store, seed=960, tag="cont-full",
                                            same_key_priority=same_key_priority)

    # Then that job joined the full set at once and finished first, and no step ran more than two items
    done = {j.id: j for j in job_store.get_many([*(j.id for j in bulk), late.id])}
    assert all(j.status == "succeeded" for j in done.values())
    assert retired[0] == late.id and sorted(retired[1:]) == sorted(j.id for j in bulk)
    assert max(step_sizes) == 2


class _ArrivesDuringDecodes(WrappedSets):
    """The engine, with its sets' calls logged (("step", ids) or ("decode", id)); the first decode of a finished
    image first runs `arrive` (a job queued, its wake-up heard) so the job is there while the rest wait."""

    def __init__(self, inner: Any, arrive: Any) -> None:
        super().__init__(inner)
        self.arrive, self.calls = arrive, []

    def wrap(self, rs: Any) -> Any:
        return _LoggedSet(rs, self)


class _LoggedSet(Forwarded):
    engine: _ArrivesDuringDecodes

    def step(self, ids: Any, **options: Any) -> Any:
        self.engine.calls.append(("step", frozenset(ids)))
        return self.inner.step(ids, **options)

    def decode(self, finished: Any) -> Any:
        if not any(what == "decode" for what, _ in self.engine.calls):
            self.engine.arrive()
        self.engine.calls.append(("decode", finished.id))
        return self.inner.decode(finished)


def test_a_job_heard_during_the_bulks_decodes_steps_between_them(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any, publishing_store: Any
) -> None:
    from tests.support.jobs import make_jobs

    # Given a wave of four 2-step jobs of tenant A that take their last step together, and tenant B's job queued
    # (through a store that publishes wake-ups) while the first of the wave's images is being decoded
    runner = make_runner(worker_batching="continuous", worker_max_batch=4)
    bulk = make_jobs(job_store, object_store, owner_id, "generate", 64, [990, 991, 992, 993], steps=2,
                     tag="cont-decodes")
    late: list[Any] = []

    def arrive() -> None:
        assert runner.wakeups is not None and runner.wakeups.listening.is_set()
        heard = runner.wakeups.heard(bulk[0].queue)
        late.append(make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64,
                             seed=994, steps=2, tag="cont-decodes"))
        wait_for(lambda: runner.wakeups.heard(bulk[0].queue) > heard, "the worker to hear the wake-up")

    runner.engine = engine = _ArrivesDuringDecodes(runner.engine, arrive)

    # When the worker serves one message of A's queue
    runner.run(bulk[0].id)
    runner.drain()

    # Then each of A's images was decoded on its own, and B's first step ran before A's last decode
    decodes = [i for what, i in engine.calls if what == "decode"]
    assert sorted(i for i in decodes if i != late[0].id) == sorted(j.id for j in bulk)
    b_first_step = next(n for n, (what, ids) in enumerate(engine.calls) if what == "step" and late[0].id in ids)
    last_a_decode = max(n for n, (what, i) in enumerate(engine.calls) if what == "decode" and i != late[0].id)
    assert b_first_step < last_a_decode, engine.calls
    done = job_store.get_many([*(j.id for j in bulk), late[0].id])
    assert all(j.status == "succeeded" for j in done), [(j.status, j.error_message) for j in done]


def test_a_keys_urgent_job_heard_during_its_own_bulks_decodes_runs_to_its_image_before_the_rest_of_them(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, publishing_store: Any
) -> None:
    from tests.support.jobs import make_jobs

    # Given a wave of four 2-step batch items (priority -10) of one key that take their last step together, and
    # the same key's single job (priority 0) queued while the first of the wave's images is being decoded
    runner = make_runner(worker_batching="continuous", worker_max_batch=4)
    bulk = make_jobs(job_store, object_store, owner_id, "generate", 64, [980, 981, 982, 983], steps=2,
                     priority=-10, tag="cont-own-decodes")
    late: list[Any] = []

    def arrive() -> None:
        assert runner.wakeups is not None and runner.wakeups.listening.is_set()
        heard = runner.wakeups.heard(bulk[0].queue)
        late.append(make_job(publishing_store, object_store, owner_id, "generate", 64, seed=984, steps=2,
                             priority=0, tag="cont-own-decodes"))
        wait_for(lambda: runner.wakeups.heard(bulk[0].queue) > heard, "the worker to hear the wake-up")

    runner.engine = engine = _ArrivesDuringDecodes(runner.engine, arrive)

    # When the worker serves one message of the queue
    runner.run(bulk[0].id)
    runner.drain()

    # Then the urgent job's two steps (a lone image is decoded within its last step) went before the three bulk
    # decodes still pending (the bulk's rows were free: nothing of it waited for a row), and every job succeeded
    first = next(n for n, (what, _) in enumerate(engine.calls) if what == "decode")
    rest = engine.calls[first + 1 :]
    assert rest[:2] == [("step", frozenset({late[0].id}))] * 2, engine.calls
    assert sorted(rest[2:]) == sorted(("decode", j.id) for j in bulk if j.id != engine.calls[first][1]), engine.calls
    done = job_store.get_many([*(j.id for j in bulk), late[0].id])
    assert all(j.status == "succeeded" for j in done), [(j.status, j.error_message) for j in done]


def test_the_wake_up_of_a_job_its_messages_claim_took_starts_no_claim_on_the_sampling_thread(
    make_runner: Any, job_store: Any, object_store: Any, session_factory: Any, publishing_store: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a continuous worker that hears queue wake-ups, and one job queued (its wake-up heard) while it idles
    runner = make_runner(worker_batching="continuous", worker_max_batch=4)
    assert runner.wakeups is not None
    wait_for(runner.wakeups.listening.is_set, "the worker to subscribe to wake-ups")
    claims_on: list[tuple[str, str]] = []  # (thread, the job's status then)
    claim = job_store.claim_for_message

    def observed(*args: Any, **kwargs: Any) -> Any:
        claims_on.append((threading.current_thread().name, job_store.get(job.id).status))
        return claim(*args, **kwargs)

    monkeypatch.setattr(job_store, "claim_for_message", observed)
    job = make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64, seed=995,
                   steps=2, tag="cont-stale-wakeup")
    wait_for(lambda: runner.wakeups.heard(job.queue) > 0, "the worker to hear the wake-up")

    # When the worker serves the job's message
    assert runner.run(job.id) == 1
    runner.drain()

    # Then the sampling thread claimed for the message and, once the set emptied, to see whether the loop may end;
    # not between: the message's claim saw the job its wake-up announced (the loop's look for more went to the
    # look thread, beside the first step)
    sampling = threading.current_thread().name
    assert claims_on[0] == (sampling, "queued"), claims_on
    assert [thread for thread, _ in claims_on].count(sampling) == 2, claims_on
    assert job_store.get(job.id).status == "succeeded"


def test_a_canceled_items_row_is_taken_by_the_next_queued_job_at_the_very_next_step(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, publishing_store: Any
) -> None:
    from tests.support.jobs import make_jobs

    # Given a set of two rows running two 6-step jobs, a third queued behind them
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    kept, victim, waiting = make_jobs(job_store, object_store, owner_id, "generate", 64, [1000, 1001, 1002],
                                      steps=6, tag="cont-cancel-row")

    def cancel() -> None:  # as the API does: the request's hint goes out on Redis and the worker hears it
        publishing_store.request_cancel(victim.id, owner_id)
        hints = runner.cancel_hints
        wait_for(lambda: hints.heard([victim.id]), "the worker to hear the cancel")

    runner.engine = engine = CancelsDuringAStep(runner.engine, cancel)
    wait_for(lambda: runner.cancel_hints is not None and runner.cancel_hints.listening.is_set(),
             "the worker to subscribe to cancel hints")

    # When the owner cancels one of the running jobs during the set's second step
    runner.run(kept.id)
    runner.drain()

    # Then the canceled job left after that step, and the queued one ran in its row at the very next step
    assert engine.steps[:2] == [{kept.id, victim.id}] * 2
    assert engine.steps[2] == {kept.id, waiting.id}, engine.steps
    done = {j.id: j for j in job_store.get_many([kept.id, victim.id, waiting.id])}
    assert done[victim.id].status == "canceled" and not object_store.page(f"results/{victim.id}/")
    assert done[kept.id].status == "succeeded" and done[waiting.id].status == "succeeded"


def _claims_by_thread(job_store: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """The store's `claim_next` observed: (the claiming thread's name, the job ids it took), appended per call."""
    claims_on: list[tuple[str, list[str]]] = []
    claim_next = job_store.claim_next

    def observed(*args: Any, **kwargs: Any) -> Any:
        claims = claim_next(*args, **kwargs)
        claims_on.append((threading.current_thread().name, [c.job_id for c in claims]))
        return claims

    monkeypatch.setattr(job_store, "claim_next", observed)
    return claims_on


@pytest.mark.parametrize("into", ["a free row", "a full set"])
def test_a_job_heard_arriving_during_a_step_is_claimed_during_it_off_the_sampling_thread_and_steps_next(
    into: str, make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any,
    publishing_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a set of two rows running two 6-step jobs of one key (for "a free row", one of them canceled during
    # the second step, so the third runs one item), with the store's claims observed by thread
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    kept, other = make_jobs(job_store, object_store, owner_id, "generate", 64, [1010, 1011], steps=6,
                            tag="cont-heard-claim")
    claims_on = _claims_by_thread(job_store, monkeypatch)
    late: list[Any] = []

    def cancel() -> None:
        publishing_store.request_cancel(other.id, owner_id)
        wait_for(lambda: runner.cancel_hints.heard([other.id]), "the worker to hear the cancel")

    def arrive() -> None:  # another key's job, its wake-up published; the step goes on once it is claimed
        late.append(make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64,
                             seed=1012, steps=2, tag="cont-heard-claim"))
        wait_for(lambda: job_store.get(late[0].id).status == "running", "the job's claim while the step runs")

    at = 3 if into == "a free row" else 2
    runner.engine = engine = ActsDuringSteps(runner.engine, {2: cancel, 3: arrive} if at == 3 else {2: arrive})
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set()
             and runner.cancel_hints is not None and runner.cancel_hints.listening.is_set(),
             "the worker to subscribe to wake-ups and cancel hints")

    # When a job arrives during a step (the action waits inside the step until the job is claimed)
    runner.run(kept.id)
    runner.drain()

    # Then it was claimed during that step by a thread other than the sampling one, and stepped at the next step
    assert engine.steps[at - 1] == ({kept.id} if at == 3 else {kept.id, other.id}), engine.steps
    assert late[0].id in engine.steps[at], engine.steps
    (took,) = [thread for thread, ids in claims_on if late[0].id in ids]
    assert took != threading.current_thread().name, claims_on
    ids = [kept.id, late[0].id] + ([] if at == 3 else [other.id])
    assert {j.status for j in job_store.get_many(ids)} == {"succeeded"}


@pytest.mark.parametrize("batching", ["whole", "continuous"])
def test_the_worker_counts_its_model_time_and_the_items_each_step_advanced(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, batching: str
) -> None:
    # Given three 4-step jobs claimed together
    runner = make_runner(worker_batching=batching)
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, range(960, 963), steps=4, tag="metered")
    # When the worker runs them
    started = time.monotonic()
    assert runner.run(jobs[0].id) == 3
    runner.drain()
    wall = time.monotonic() - started
    assert {job_store.get(j.id).status for j in jobs} == {"succeeded"}
    # Then its model time is counted (within the run's wall time), and the items per step add up: a running set
    # advanced each item once per step (3 x 4 item-steps), a whole batch is observed once per call (3 items)
    registry, labels = runner.metrics.registry, dict(zip(("kind", "size"), job_labels(jobs[0]), strict=True))
    busy = registry.get_sample_value("unipic_worker_model_busy_seconds_total")
    assert busy is not None and 0 < busy <= wall
    item_steps = registry.get_sample_value("unipic_worker_step_items_sum", labels)
    assert item_steps == (12 if batching == "continuous" else 3)


@pytest.mark.parametrize("arriving", ["a held key's job", "another key's job"])
def test_a_full_set_woken_by_a_job_of_a_key_it_holds_at_that_priority_makes_no_newcomer_claim(
    arriving: str, make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any,
    publishing_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.runner.continuous as continuous

    # Given a full set of two rows running two 6-step jobs of one key, newcomer claims observed, and no newcomer
    # claim but a wake-up's after the loop's first (the safety tick pushed out of the run)
    monkeypatch.setattr(continuous, "NEWCOMER_SAFETY_SECONDS", 3600.0)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    held = make_jobs(job_store, object_store, owner_id, "generate", 64, [1020, 1021], steps=6, tag="cont-said")
    newcomer_claims: list[list[str]] = []  # after the arrival
    late: list[Any] = []
    claim_next = job_store.claim_next

    def observed(*args: Any, **kwargs: Any) -> Any:
        claims = claim_next(*args, **kwargs)
        if late and kwargs.get("above") is not None:
            newcomer_claims.append([c.job_id for c in claims])
        return claims

    monkeypatch.setattr(job_store, "claim_next", observed)

    def arrive() -> None:  # a job queued as the API queues one (its wake-up names its key), heard by the worker
        owner = owner_id if arriving == "a held key's job" else add_owner(session_factory)
        queue = held[0].queue
        before = runner.wakeups.heard(queue)
        late.append(make_job(publishing_store, object_store, owner, "generate", 64, seed=1022, steps=2,
                             tag="cont-said"))
        wait_for(lambda: runner.wakeups.heard(queue) > before, "the worker to hear the wake-up")

    marks: list[int] = []
    runner.engine = engine = ActsDuringSteps(runner.engine, {2: arrive, 4: lambda: marks.append(len(newcomer_claims))})
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set(),
             "the worker to subscribe to wake-ups")

    # When the job arrives during the set's second step
    runner.run(held[0].id)
    runner.drain()

    # Then by the fourth step a held key's job (same priority) started no claim, and took a row once one was free;
    # another key's job was claimed as a newcomer at once
    if arriving == "a held key's job":
        assert marks == [0], newcomer_claims
        assert all(late[0].id not in step for step in engine.steps[:6]), engine.steps
    else:
        assert marks == [1] and newcomer_claims[0] == [late[0].id], newcomer_claims
        assert late[0].id in engine.steps[2], engine.steps
    assert {j.status for j in job_store.get_many([*(j.id for j in held), late[0].id])} == {"succeeded"}


def test_a_newcomer_heard_while_a_claim_ahead_is_in_flight_is_claimed_beside_it_off_the_sampling_thread(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any,
    publishing_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a full set of two rows (two 2-step jobs of one key, claimed together) and a third job of that key
    # queued, so the rows they free are claimed ahead while their last step runs; the store's claims observed
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    first, second, queued = make_jobs(job_store, object_store, owner_id, "generate", 64, [1030, 1031, 1032],
                                      steps=2, tag="cont-beside")
    claims_on = _claims_by_thread(job_store, monkeypatch)
    late: list[Any] = []

    def arrive() -> None:  # once the claim ahead took the queued job (its look stays in flight until the next
        # pass collects it), another key's job arrives, its wake-up published; the step goes on once it is claimed
        wait_for(lambda: job_store.get(queued.id).status == "running", "the claim ahead")
        late.append(make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64,
                             seed=1033, steps=2, tag="cont-beside"))
        wait_for(lambda: job_store.get(late[0].id).status == "running", "the job's claim while the step runs")

    runner.engine = engine = ActsDuringSteps(runner.engine, {2: arrive})
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set(),
             "the worker to subscribe to wake-ups")

    # When that job arrives during their last step (the action waits inside it until the job is claimed)
    runner.run(first.id)
    runner.drain()

    # Then it was claimed during that step, off the sampling thread, and stepped at the next step (the less
    # served key's item first, `step_policy`); the job claimed ahead took a freed row (claimed once: nothing went
    # back to the queue)
    assert engine.steps[1] == {first.id, second.id}, engine.steps
    assert late[0].id in engine.steps[2], engine.steps
    (took,) = [thread for thread, ids in claims_on if late[0].id in ids]
    assert took != threading.current_thread().name, claims_on
    assert sum(queued.id in ids for _, ids in claims_on) == 1, claims_on
    done = job_store.get_many([first.id, second.id, queued.id, late[0].id])
    assert {j.status for j in done} == {"succeeded"} and {j.attempts for j in done} == {0}


def test_a_job_heard_while_the_set_holds_its_newcomer_is_claimed_once_that_one_leaves(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any,
    publishing_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.runner.continuous as continuous

    # Given a full set of two rows running two 8-step jobs of one key, and no newcomer claim but a wake-up's (the
    # safety tick pushed out of the run)
    monkeypatch.setattr(continuous, "NEWCOMER_SAFETY_SECONDS", 3600.0)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    held = make_jobs(job_store, object_store, owner_id, "generate", 64, [1050, 1051], steps=8, tag="cont-owed")
    other = add_owner(session_factory)
    late: list[Any] = []

    def arrive() -> None:  # another key's 2-step job queued as the API queues one, heard by the worker
        queue = held[0].queue
        before = runner.wakeups.heard(queue)
        late.append(make_job(publishing_store, object_store, other, "generate", 64, seed=1052 + len(late),
                             steps=2, tag="cont-owed"))
        wait_for(lambda: runner.wakeups.heard(queue) > before, "the worker to hear the wake-up")

    def arrive_claimed() -> None:
        arrive()
        wait_for(lambda: job_store.get(late[0].id).status == "running", "the newcomer's claim")

    runner.engine = engine = ActsDuringSteps(runner.engine, {2: arrive_claimed, 3: arrive})
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set(),
             "the worker to subscribe to wake-ups")

    # When that key's first job arrives during the second step (claimed as the set's newcomer, one over the cap)
    # and its second during the newcomer's first step
    runner.run(held[0].id)
    runner.drain()

    # Then the newcomer took its two steps, and the second job, heard while the set held it, stepped right after
    # them, not after the bulk's remaining steps (its wake-up was spent while the set was over its cap)
    first, second = late
    assert engine.steps[2] == {first.id} and engine.steps[3] == {first.id}, engine.steps
    names = {held[0].id: "a1", held[1].id: "a2", first.id: "b1", second.id: "b2"}
    assert engine.steps[4] == {second.id}, [sorted(names[i] for i in st) for st in engine.steps]
    done = job_store.get_many([*(j.id for j in held), first.id, second.id])
    assert {j.status for j in done} == {"succeeded"}


def test_a_set_whose_claim_of_free_rows_is_in_flight_makes_no_newcomer_claim_of_its_own(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one 4-step job alone in a set of two rows, so its free row is claimed off the sampling thread, and that
    # claim held in flight until the third step; the store's claims observed
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    (alone,) = make_jobs(job_store, object_store, owner_id, "generate", 64, [1040], steps=4, tag="cont-no-newcomer")
    release = threading.Event()
    sampling = threading.current_thread().name
    newcomer_claims: list[str] = []
    claim_next, claim_for_message = job_store.claim_next, job_store.claim_for_message

    def held(*args: Any, **kwargs: Any) -> Any:  # a claim of free rows, in flight until released
        if threading.current_thread().name != sampling:
            release.wait(60.0)
        return claim_for_message(*args, **kwargs)

    def observed(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == sampling and kwargs.get("above") is not None:
            newcomer_claims.append(threading.current_thread().name)
        return claim_next(*args, **kwargs)

    monkeypatch.setattr(job_store, "claim_for_message", held)
    monkeypatch.setattr(job_store, "claim_next", observed)
    runner.engine = engine = ActsDuringSteps(runner.engine, {3: release.set})
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set(),
             "the worker to subscribe to wake-ups")

    # When the job runs with no other job arriving
    runner.run(alone.id)
    runner.drain()

    # Then while that claim was in flight its rows counted as taken, yet no newcomer claim ran on the sampling
    # thread (the claim in flight takes any key's job: each single job paid 5-20 ms of idle device for one)
    assert len(engine.steps) == 4 and newcomer_claims == [], newcomer_claims
    assert job_store.get(alone.id).status == "succeeded"


class _ActsDuringFirstDecode(WrappedSets):
    """Runs `action()` inside the first VAE decode of a wave that left its set undecoded."""

    def __init__(self, inner: Any, action: Any) -> None:
        super().__init__(inner)
        self.action = action

    def wrap(self, rs: Any) -> Any:
        engine = self

        class Decoding(Forwarded):
            def decode(self, finished: Any) -> Any:
                action, engine.action = engine.action, None
                if action is not None:
                    action()
                return self.inner.decode(finished)

        return Decoding(rs, self)


def test_a_newcomer_heard_while_the_sets_items_wait_for_their_decodes_passes_over_their_key(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, session_factory: Any,
    publishing_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.runner.continuous as continuous

    # Given a full set of two rows (two 2-step jobs of key A, claimed together: a wave, decoded one pass each after
    # its last step) and two more of A's jobs queued, whose claim ahead (of the rows the wave frees) stays in
    # flight until the newcomer below was claimed; no newcomer claim but a wake-up's after the loop's first
    monkeypatch.setattr(continuous, "NEWCOMER_SAFETY_SECONDS", 3600.0)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2)
    first, second, *queued = make_jobs(job_store, object_store, owner_id, "generate", 64, [1040, 1041, 1042, 1043],
                                       steps=2, tag="cont-decoding")
    late: list[Any] = []
    newcomer_claims: list[tuple[dict[str, int], list[str]]] = []  # after the arrival: (passed over, took)
    newcomer_claimed = threading.Event()
    claim_next = job_store.claim_next

    def observed(*args: Any, **kwargs: Any) -> Any:
        above = kwargs.get("above")
        if above is None and threading.current_thread() is not threading.main_thread():  # the claim ahead
            assert newcomer_claimed.wait(60), "the newcomer's claim"
        claims = claim_next(*args, **kwargs)
        if late and above is not None:
            newcomer_claims.append((dict(above), [c.job_id for c in claims]))
            newcomer_claimed.set()
        return claims

    monkeypatch.setattr(job_store, "claim_next", observed)

    def arrive() -> None:  # during the wave's first decode: its rows are free, their claim ahead in flight
        late.append(make_job(publishing_store, object_store, add_owner(session_factory), "generate", 64,
                             seed=1044, steps=2, tag="cont-decoding"))
        wait_for(lambda: job_store.get(late[0].id).status == "running", "the newcomer's claim during the decode")

    runner.engine = _ActsDuringFirstDecode(runner.engine, arrive)
    wait_for(lambda: runner.wakeups is not None and runner.wakeups.listening.is_set(),
             "the worker to subscribe to wake-ups")

    # When another key's job arrives while the wave is decoded
    runner.run(first.id)
    runner.drain()

    # Then its newcomer claim passed over A's key at the priority the loop holds of it (the wave waiting for its
    # decodes is held: a claim free to take A's next job takes it whenever A's last charge is not yet committed)
    # and took the new job; the claim ahead took A's queued jobs, nothing claimed twice
    assert newcomer_claims == [({owner_id: first.priority}, [late[0].id])], newcomer_claims
    done = job_store.get_many([first.id, second.id, *(j.id for j in queued), late[0].id])
    assert {j.status for j in done} == {"succeeded"} and {j.attempts for j in done} == {0}
