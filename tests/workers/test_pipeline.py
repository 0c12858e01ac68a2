"""Worker pipelining (issue 20, item 3): writing batch N while batch N+1 samples changes no result and no state.

Pipelining is an option of whole-batch execution (`UNIPIC_WORKER_BATCHING=whole`); continuous batching always
retires items in the background while sampling goes on (tests/workers/test_continuous_runner.py)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from tests.support.jobs import cancel_leftover_jobs, decode, make_job
from workers.faults import FaultInjector
from workers.runner.pipeline import FinishPipeline


def _outcome(job_store: Any, object_store: Any, ids: list[str]) -> list[tuple]:
    out = []
    for job in job_store.get_many(ids):
        images = [np.asarray(decode(object_store, k)) for k in job.result_keys or []]
        out.append((job.params["seed"], job.params["steps"], job.status, job.error_code, job.batch_size,
                    [i.tobytes() for i in images]))
    return sorted(out)


def _two_batches(make_runner: Any, job_store: Any, object_store: Any, owner_id: str, pipelined: bool,
                 tag: str, faults: FaultInjector | None = None) -> list[tuple]:
    runner = make_runner(faults, worker_batching="whole")
    runner.pipeline = FinishPipeline(enabled=pipelined)
    # two incompatible groups (steps differ), so two batches of two
    first = [make_job(job_store, object_store, owner_id, "generate", 64, seed=40 + i, steps=2, tag=tag)
             for i in range(2)]
    second = [make_job(job_store, object_store, owner_id, "generate", 64, seed=50 + i, steps=3, tag=tag)
              for i in range(2)]
    # (a claim takes the best job of the queue: strangers' jobs requeued meanwhile must not take these claims)
    cancel_leftover_jobs(job_store.sessions, except_owner=owner_id)
    assert runner.run(first[0].id) == 2
    cancel_leftover_jobs(job_store.sessions, except_owner=owner_id)
    assert runner.run(second[0].id) == 2
    runner.drain()
    return _outcome(job_store, object_store, [j.id for j in first + second])


def test_pipelined_batches_give_the_same_results_and_states(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    serial = _two_batches(make_runner, job_store, object_store, owner_id, False, "pipe-off")
    pipelined = _two_batches(make_runner, job_store, object_store, owner_id, True, "pipe-on")
    assert [o[2:5] for o in pipelined] == [("succeeded", None, 2)] * 4
    assert pipelined == serial  # same seeds, same bytes


def test_pipelined_oom_split_keeps_per_item_outcomes(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    faults = FaultInjector(oom_above_items=1)
    serial = _two_batches(make_runner, job_store, object_store, owner_id, False, "pipe-oom-off", faults)
    pipelined = _two_batches(make_runner, job_store, object_store, owner_id, True, "pipe-oom-on", faults)
    assert [o[2:5] for o in pipelined] == [("succeeded", None, 2)] * 4
    assert pipelined == serial


def test_one_batch_in_flight_and_drain_waits() -> None:
    pipeline = FinishPipeline(enabled=True)
    release = threading.Event()
    order: list[str] = []
    pipeline.submit(lambda: (release.wait(), order.append("first")))
    started = threading.Event()

    def second_submit() -> None:
        started.set()
        pipeline.submit(lambda: order.append("second"))  # waits until the first is written
        order.append("submitted second")

    thread = threading.Thread(target=second_submit)
    thread.start()
    started.wait()
    assert order == []  # the first is still in flight, so the second is not yet handed over
    release.set()
    thread.join()
    pipeline.drain()
    assert order == ["first", "submitted second", "second"]
    pipeline.close()


def test_disabled_runs_inline_and_a_failure_is_contained() -> None:
    pipeline = FinishPipeline(enabled=False)
    ran: list[int] = []
    pipeline.submit(lambda: ran.append(1))
    assert ran == [1]
    with pytest.raises(ZeroDivisionError):  # serial: the caller sees it, as before pipelining
        pipeline.submit(lambda: 1 / 0)
    on = FinishPipeline(enabled=True)
    on.submit(lambda: 1 / 0)  # in the background: logged, never raised into the model loop
    on.drain()
    on.close()
