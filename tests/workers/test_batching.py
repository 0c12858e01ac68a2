"""Batches under stress: cancellation while queued and while running, and out-of-memory splitting.

These run whole-batch workers (`UNIPIC_WORKER_BATCHING=whole`, the fallback to the default continuous batching), so
the fallback keeps a system test; tests/workers/test_continuous.py has the continuous counterparts.

Faults come from the worker's test-only fault injector (`workers.faults`): slowed sampling steps to catch a
batch mid-run, and simulated out-of-memory errors above a batch size or a pixel count.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.jobs import decode, enqueue, make_job, make_jobs, make_together, new_job
from tests.support.waiting import wait_for, wait_terminal

pytestmark = pytest.mark.system  # starts model-worker processes

STEPS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cancel_while_queued_and_while_running_leaves_batch_mates_unchanged(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any
) -> None:
    # Given four compatible jobs, one of them canceled while still queued (made in one transaction, and before
    # the worker starts: a worker taking a stale wake-up of this queue would claim only the jobs made so far
    # between separate inserts, or all four between the insert and the cancel)
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, seeds=range(500, 504), steps=STEPS,
                     tag="cancel")
    keep_a, victim, keep_b, queued_victim = jobs
    assert job_store.request_cancel(queued_victim.id, owner_id).status == "canceled"
    worker = start_worker("cancel", UNIPIC_FAULT_STEP_DELAY_MS="200", UNIPIC_WORKER_BATCHING="whole")

    # When the other three run as one batch and one of them is canceled mid-run
    # (stamped before sending: a stamp still holding a batch-mate's row lock when the worker claims would make
    # the claim skip that mate, SKIP LOCKED, and the batch would hold two)
    enqueue(job_store, celery_app, jobs, stamp_first=True)
    wait_for(lambda: job_store.get(victim.id).status == "running", "the batch to start")
    job_store.request_cancel(victim.id, owner_id)
    done = wait_terminal(job_store, [j.id for j in jobs], workers=[worker])

    # Then the canceled ones end canceled and the others succeed in that same batch of three
    assert done[queued_victim.id].status == "canceled" and done[queued_victim.id].started_at is None
    assert done[victim.id].status == "canceled" and done[victim.id].error_code == "canceled"
    assert done[victim.id].result_keys is None and not object_store.page(f"results/{victim.id}/")
    for job in (keep_a, keep_b):
        assert done[job.id].status == "succeeded" and done[job.id].batch_size == 3

    # And their images equal those of the same seeds run alone
    for job in (keep_a, keep_b):
        alone = make_job(job_store, object_store, owner_id, "generate", 64, seed=job.params["seed"], steps=STEPS,
                         tag="cancel-alone")
        enqueue(job_store, celery_app, [alone])
        alone_done = wait_terminal(job_store, [alone.id], workers=[worker])[alone.id]
        assert alone_done.status == "succeeded" and alone_done.batch_size == 1
        batched = np.asarray(decode(object_store, done[job.id].result_keys[0]), dtype=np.int16)
        solo = np.asarray(decode(object_store, alone_done.result_keys[0]), dtype=np.int16)
        assert np.abs(batched - solo).max() <= 2


def test_out_of_memory_splits_the_batch_and_an_item_that_cannot_fit_fails_alone(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any
) -> None:
    # Given a worker that runs out of memory above one item per call or above 64x64 pixels
    port = free_port()
    worker = start_worker("oom", UNIPIC_FAULT_OOM_ABOVE="1", UNIPIC_FAULT_OOM_ABOVE_PIXELS=str(64 * 64),
                          UNIPIC_WORKER_METRICS_PORT=str(port), UNIPIC_WORKER_BATCHING="whole")
    *small, big = make_together(job_store, [
        *(new_job(object_store, owner_id, "generate", 64, seed=700 + i, tag="oom") for i in range(4)),
        new_job(object_store, owner_id, "generate", 128, seed=777, tag="oom"),
    ])

    # When a batch of four small jobs and one large job arrive
    # (all stamped before sending, in one statement: a stamp still holding some of the four's row locks when the
    # worker claims, for our message or a stale one, would make the claim skip them, SKIP LOCKED)
    enqueue(job_store, celery_app, [*small, big], stamp_first=True)
    done = wait_terminal(job_store, [j.id for j in [*small, big]], workers=[worker])

    # Then the batch was split down to single items that all succeeded
    for job in small:
        assert done[job.id].status == "succeeded" and done[job.id].batch_size == 4
        assert decode(object_store, done[job.id].result_keys[0]).size == (64, 64)

    def metrics_text() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    # (the worker counts a failure just after writing it: the last job may be terminal a moment before)
    wait_for(lambda: 'unipic_worker_jobs_total{outcome="out_of_memory"} 1.0' in metrics_text(),
             "the worker to count the out-of-memory failure")
    metrics = metrics_text()
    assert "unipic_worker_oom_splits_total 3.0" in metrics  # 4 -> 2+2 -> 1+1, 1+1
    assert 'unipic_worker_jobs_total{outcome="out_of_memory"} 1.0' in metrics
    # And the single item that cannot fit failed with out_of_memory
    assert done[big.id].status == "failed" and done[big.id].error_code == "out_of_memory"

    # And the worker is still healthy afterwards
    after = make_job(job_store, object_store, owner_id, "understand", 64, seed=9, tag="oom-after")
    enqueue(job_store, celery_app, [after])
    assert wait_terminal(job_store, [after.id], workers=[worker])[after.id].status == "succeeded"
    assert worker.proc.poll() is None
