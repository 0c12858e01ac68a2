"""Claims while a step samples (`UNIPIC_WORKER_CLAIM_AHEAD`, the default): the rows a step frees are
claimed off the sampling thread while it runs and their jobs start at the next step; a claim that finds more
than the rows free when it is collected hands the rest back; a loop that ends with one in flight hands back what
it took. The real store, S3 and tiny engine in this process. A step that frees rows waits until the claim made
for them has returned, so the order is forced by events, not by timing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.support.jobs import make_jobs
from tests.support.running_sets import Forwarded, WrappedSets

LOOK_THREAD = "claim-look"


class ClaimGate:
    """Observes the store's claims of free rows (thread, job ids); `returned` is set by each one made on the
    runner's look thread."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims: list[tuple[str, list[str]]] = []
        self.returned = threading.Event()
        claim_for_message = store.claim_for_message

        def observed(*args: Any, **kwargs: Any) -> Any:
            claims = claim_for_message(*args, **kwargs)
            name = threading.current_thread().name
            self.claims.append((name, [c.job_id for c in claims]))
            if name.startswith(LOOK_THREAD):
                self.returned.set()
            return claims

        monkeypatch.setattr(store, "claim_for_message", observed)

    def ahead(self) -> list[str]:
        """Jobs claimed on the look thread, in order."""
        return [i for name, ids in self.claims if name.startswith(LOOK_THREAD) for i in ids]


class EndingStepsWait(WrappedSets):
    """The engine, whose first `held` steps that end an item each wait (up to 30 s) for a claim on the look
    thread to return, then run `then` (which may raise: the step then changes nothing), then step."""

    def __init__(self, inner: Any, gate: ClaimGate, held: int, then: Callable[[], None] = lambda: None) -> None:
        super().__init__(inner)
        self.gate, self.held, self.then = gate, held, then
        self.waited: list[bool] = []

    def wrap(self, rs: Any) -> Any:
        return _GatedSet(rs, self)


class _GatedSet(Forwarded):
    engine: EndingStepsWait

    def step(self, ids: Any, **options: Any) -> Any:
        engine, progress = self.engine, self.inner.progress()
        if len(engine.waited) < engine.held and any(progress[i][0] + 1 >= progress[i][1] for i in ids):
            engine.waited.append(engine.gate.returned.wait(30))
            engine.gate.returned.clear()
            engine.then()
        return self.inner.step(ids, **options)


def test_the_rows_a_step_frees_are_claimed_while_it_samples(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog of four 2-step jobs for a worker of two rows that claims ahead
    gate = ClaimGate(job_store, monkeypatch)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2, worker_claim_ahead=True)
    runner.engine = engine = EndingStepsWait(runner.engine, gate, held=2)
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, [970, 971, 972, 973], steps=2,
                     tag="ahead")

    # When the worker serves one message of the queue
    assert runner.run(jobs[0].id) == 4
    runner.drain()

    # Then the last two were claimed on the look thread while the step that freed their rows was held (and the
    # claim during the last step found the queue empty), and all four succeeded
    assert engine.waited == [True, True]
    assert sorted(gate.ahead()) == sorted(j.id for j in jobs[2:])
    assert [name.startswith(LOOK_THREAD) for name, _ in gate.claims][:3] == [False, True, True]
    done = job_store.get_many([j.id for j in jobs])
    assert all(j.status == "succeeded" for j in done), [(j.status, j.error_message) for j in done]
    assert min(j.started_at for j in done[2:]) > max(j.started_at for j in done[:2])


def test_a_claim_that_finds_more_than_the_free_rows_hands_the_rest_back(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker of two rows that claims ahead, whose first step that ends items runs out of memory after
    # the claim for their rows returned (the set shrinks to one row: nothing was freed)
    gate = ClaimGate(job_store, monkeypatch)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2, worker_claim_ahead=True)

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("injected: out of memory")

    runner.engine = engine = EndingStepsWait(runner.engine, gate, held=1, then=out_of_memory)
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, [975, 976, 977, 978], steps=1,
                     tag="ahead-surplus")
    caplog.set_level(logging.INFO, logger="workers.runner.continuous")

    # When the worker serves one message of the queue
    runner.run(jobs[0].id)
    runner.drain()

    # Then what that claim took went back to the queue at the next pass (no free row), without spending an
    # attempt, and every job succeeded
    assert engine.waited == [True]
    assert "a claim while sampling found 2 jobs for 0 free rows: the rest go back" in caplog.text
    done = job_store.get_many([j.id for j in jobs])
    assert all(j.status == "succeeded" and j.attempts == 0 for j in done), [(j.status, j.attempts) for j in done]


def test_a_loop_that_ends_with_a_claim_in_flight_hands_back_what_it_took(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker of two rows that claims ahead, asked to shut down (with time for its live items) during the
    # step that ends its first two jobs, after the claim for their rows returned
    gate = ClaimGate(job_store, monkeypatch)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2, worker_claim_ahead=True)
    runner.engine = engine = EndingStepsWait(runner.engine, gate, held=1, then=runner.shutdown.request)
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, [980, 981, 982, 983], steps=1,
                     tag="ahead-stop")

    # When the worker serves one message of the queue
    assert runner.run(jobs[0].id) == 2
    runner.drain()

    # Then the two live jobs finished and the two the claim took are back in the queue on their first attempt,
    # with nothing written
    assert engine.waited == [True]
    assert sorted(gate.ahead()) == sorted(j.id for j in jobs[2:])
    done = job_store.get_many([j.id for j in jobs])
    assert [j.status for j in done[:2]] == ["succeeded", "succeeded"]
    for job in done[2:]:
        assert job.status == "queued" and job.attempts == 0 and not job.result_keys, job
        assert not object_store.page(f"results/{job.id}/")


def test_inputs_of_jobs_claimed_ahead_are_read_off_the_sampling_thread(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.jobs import make_job

    # Given a backlog of four 2-step edit jobs, the last with an input that is not an image, for a worker of
    # two rows that claims ahead; the threads that fetch each input are observed
    gate = ClaimGate(job_store, monkeypatch)
    runner = make_runner(worker_batching="continuous", worker_max_batch=2, worker_claim_ahead=True)
    runner.engine = EndingStepsWait(runner.engine, gate, held=2)
    fetched: dict[str, list[str]] = {}
    get = object_store.get

    def observed_get(key: str, verify: bool = False) -> bytes:
        fetched.setdefault(key, []).append(threading.current_thread().name)
        return get(key, verify)

    monkeypatch.setattr(object_store, "get", observed_get)
    jobs = [make_job(job_store, object_store, owner_id, "edit", 64, seed=985 + i, steps=2, tag="ahead-inputs",
                     **({"input_bytes": b"not an image"} if i == 3 else {})) for i in range(4)]

    # When the worker serves one message of the queue
    runner.run(jobs[0].id)
    runner.drain()

    # Then the inputs of the jobs claimed while a step sampled were fetched on the look thread, and the one that
    # is not an image was read again at admission and failed that job alone
    assert sorted(gate.ahead()) == sorted(j.id for j in jobs[2:])
    assert [fetched[j.input_key][0].startswith(LOOK_THREAD) for j in jobs] == [False, False, True, True]
    assert not fetched[jobs[3].input_key][1].startswith(LOOK_THREAD)
    done = job_store.get_many([j.id for j in jobs])
    assert [j.status for j in done] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert done[3].error_code == "invalid_input"
