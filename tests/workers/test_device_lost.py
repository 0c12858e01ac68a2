"""A device that breaks mid-batch: the worker hands the batch back and exits; nothing is lost or charged.

The "device lost" fault of the test-only injector (`workers.faults`) makes every model call fail the way a GPU
that fell off the bus does, from a given sampling step on. In process, the runner releases the batch at once;
with real processes, the broken worker exits with `DEVICE_LOST` and a second worker finishes every job once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.jobs import enqueue, make_job
from tests.support.waiting import wait_terminal
from workers.device.health import DeviceFatal, GuardedEngine, is_device_fatal, probe_request
from workers.faults import DEVICE_LOST_MESSAGE, FaultInjector
from workers.startup import ExitCode

EXIT_TIMEOUT = 120.0


def test_device_errors_are_told_from_item_errors() -> None:
    import torch

    assert is_device_fatal(RuntimeError(DEVICE_LOST_MESSAGE))
    assert is_device_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_device_fatal(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_device_fatal(ValueError("mixed compatibility keys in one call"))


def test_an_items_own_error_stays_the_items_when_the_probe_passes(tiny_engine: Any, settings: Any) -> None:
    # Given a guarded engine on a healthy device
    guarded = GuardedEngine(tiny_engine, probe_request(settings.allowed_sizes, settings.worker_max_pixels))
    # When one item makes the engine raise an unexplained error
    with pytest.raises(Exception) as raised:
        guarded.understand([object()])
    # Then the probe passes and the error is the item's, not the device's
    assert not isinstance(raised.value, DeviceFatal)
    assert guarded.counts() == (0, 1)


@pytest.mark.parametrize("batching", ["whole", "continuous"])
def test_a_lost_device_releases_the_whole_batch_without_charging_attempts(
    make_runner: Any, tiny_engine: Any, job_store: Any, object_store: Any, owner_id: str, settings: Any,
    batching: str,
) -> None:
    # Given a batch of three jobs and a device that is lost at the second sampling step
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=s, steps=4, tag="lost-inproc")
            for s in (1, 2, 3)]
    faults = FaultInjector(device_lost_after_steps=1)
    runner = make_runner(faults, worker_batching=batching)
    runner.engine = GuardedEngine(tiny_engine, probe_request(settings.allowed_sizes, settings.worker_max_pixels),
                                  check_device=faults.check_device)

    # When the runner takes the batch
    with pytest.raises(DeviceFatal):
        runner.run(jobs[0].id)

    # Then every job is back in the queue at once, on its first attempt, with nothing written
    for job in job_store.get_many([j.id for j in jobs]):
        assert job.status == "queued" and job.attempts == 0 and not job.result_keys, job
        job_store.request_cancel(job.id, owner_id)


@pytest.mark.system
def test_a_worker_whose_device_is_lost_mid_batch_exits_and_another_finishes_its_jobs(
    start_worker: Any, registry: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any,
) -> None:
    # Given a worker whose device is lost at the second sampling step, and a batch of four jobs for it
    broken = start_worker("broken", UNIPIC_FAULT_DEVICE_LOST_AFTER_STEPS="1")
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=s, steps=4, tag="lost")
            for s in (11, 12, 13, 14)]
    ids = [j.id for j in jobs]
    enqueue(job_store, celery_app, jobs, stamp_first=True)

    # When the device is lost mid-batch
    code = broken.proc.wait(timeout=EXIT_TIMEOUT)

    # Then the worker exits with DEVICE_LOST, says why, and its record says it stopped
    assert code == int(ExitCode.DEVICE_LOST), broken.log()[-4000:]
    assert "error: the device failed" in broken.log()
    assert [w.stopped_at is not None for w in registry.all() if w.pid == broken.pid] == [True]
    # And its jobs are back in the queue, attempts not charged
    assert {(j.status, j.attempts) for j in job_store.get_many(ids)} == {("queued", 0)}

    # When a healthy worker starts
    healthy = start_worker("healthy")

    # Then it finishes every job exactly once, on the first attempt, none lost
    done = wait_terminal(job_store, ids, workers=[broken, healthy])
    assert {j.status for j in done.values()} == {"succeeded"}, {j.id: j.error_message for j in done.values()}
    for job in done.values():
        assert job.attempts == 0 and job.worker_id is not None and job.worker_id.endswith(f":{healthy.pid}")
        [key] = job.result_keys or []
        assert key.startswith(f"results/{job.id}/") and key.endswith("/0.png") and object_store.exists(key)
