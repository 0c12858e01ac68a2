"""Continuous batching (`UNIPIC_WORKER_BATCHING=continuous`) in a real worker process: a job queued while a running
set holds its rows joins at the next step, a canceled item leaves at the next step and its row is reused, and
every result equals the same job run alone (fp32 CPU, one thread: within one level of 255). Steps are held with the
worker's file gate (`UNIPIC_FAULT_HOLD_FILE`) while the test acts, so nothing depends on step speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.jobs import decode, enqueue, make_job, make_jobs
from tests.support.waiting import wait_for, wait_terminal

pytestmark = pytest.mark.system  # starts a model-worker process

STEPS = 8
HELD_AT = 3  # UNIPIC_FAULT_HOLD_AFTER_STEPS=2: the worker's file gate holds the loop after its third step


def test_a_job_queued_mid_set_takes_a_canceled_items_row_and_results_equal_alone(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any, tmp_path: Path,
    publishing_store: Any,
) -> None:
    release = tmp_path / "release"
    worker = start_worker("continuous", UNIPIC_WORKER_BATCHING="continuous", UNIPIC_WORKER_MAX_BATCH="2",
                          UNIPIC_WORKER_KINDS="generate", UNIPIC_FAULT_HOLD_FILE=str(release),
                          UNIPIC_FAULT_HOLD_AFTER_STEPS="2", OMP_NUM_THREADS="1")

    # Given a running set of two jobs (the row budget), held after its third step
    keep, victim = make_jobs(job_store, object_store, owner_id, "generate", 64, [910, 911], steps=STEPS,
                             tag="continuous")
    enqueue(job_store, celery_app, [keep, victim], stamp_first=True)
    wait_for(lambda: all((job_store.get(j.id).progress_step or 0) >= HELD_AT for j in (keep, victim)),
             "the set to be held after its third step")

    # When one of them is canceled and a new job is queued while the set is held
    late = make_job(job_store, object_store, owner_id, "generate", 64, seed=912, steps=STEPS, tag="continuous-late")
    publishing_store.request_cancel(victim.id, owner_id)  # as the API does: its cancel hint goes out on Redis
    enqueue(job_store, celery_app, [late])
    release.touch()
    done = wait_terminal(job_store, [keep.id, victim.id, late.id], workers=[worker])

    # Then the canceled item left within one step, and the new job took its row before the first item finished
    assert done[victim.id].status == "canceled" and done[victim.id].result_keys is None
    assert done[victim.id].progress_step <= HELD_AT + 1
    assert not object_store.page(f"results/{victim.id}/")
    assert done[keep.id].status == "succeeded" and done[late.id].status == "succeeded"
    assert done[late.id].started_at < done[keep.id].finished_at

    # And each result equals the same job run alone within the documented bound (one level of 255: final tokens
    # agree within 1e-5, tests/model/test_running_set.py, and a pixel near a rounding edge may move by one level)
    for job in (keep, late):
        alone = make_job(job_store, object_store, owner_id, "generate", 64, seed=job.params["seed"], steps=STEPS,
                         tag="continuous-alone")
        enqueue(job_store, celery_app, [alone])
        alone_done = wait_terminal(job_store, [alone.id], workers=[worker])[alone.id]
        assert alone_done.status == "succeeded"
        shared = np.asarray(decode(object_store, done[job.id].result_keys[0]))
        solo = np.asarray(decode(object_store, alone_done.result_keys[0]))
        diff = np.abs(shared.astype(int) - solo.astype(int))
        assert diff.max() <= 1, f"job {job.id}: {int((diff > 0).sum())} channels differ, most by {diff.max()}"


def test_out_of_memory_shrinks_the_set_and_sends_the_newest_items_back_to_the_queue(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any
) -> None:
    # Given a continuous worker whose steps run out of memory above one item
    worker = start_worker("continuous-oom", UNIPIC_WORKER_BATCHING="continuous", UNIPIC_WORKER_MAX_BATCH="3",
                          UNIPIC_WORKER_KINDS="generate", UNIPIC_FAULT_OOM_ABOVE="1", OMP_NUM_THREADS="1")
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, [920, 921, 922], steps=3,
                     tag="continuous-oom")

    # When three of them are claimed into one set
    enqueue(job_store, celery_app, jobs, stamp_first=True)
    done = wait_terminal(job_store, [j.id for j in jobs], workers=[worker])

    # Then the set shrinks to what fits and every job still succeeds, none counted as a lost attempt
    for job in jobs:
        assert done[job.id].status == "succeeded", done[job.id]
        assert done[job.id].attempts == 0
    assert "back to the queue" in worker.log()
