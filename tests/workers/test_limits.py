"""Time limits scale with pixels x steps, with a floor."""

from __future__ import annotations

from typing import Any

from tests.support.jobs import make_job
from workers.faults import FaultInjector
from workers.runner.limits import BatchClock, hard_limit_seconds, job_pixels, soft_limit_seconds, work_steps


def test_small_batches_get_the_floor() -> None:
    jobs = [("generate", {"width": 64, "height": 64, "num_images": 1, "steps": 4})]
    assert soft_limit_seconds(jobs, floor_seconds=120, seconds_per_megapixel_step=2.0) == 120


def test_limit_grows_with_pixels_steps_and_items() -> None:
    one = ("generate", {"width": 1024, "height": 1024, "num_images": 2, "steps": 64})
    # 2.097152 MP x 64 steps x 2 s = 268.4 s, above the floor
    assert abs(soft_limit_seconds([one], 120, 2.0) - 2 * 1.048576 * 64 * 2.0) < 1e-9  # wallclock-ok: arithmetic
    assert soft_limit_seconds([one, one], 120, 2.0) == 2 * soft_limit_seconds([one], 120, 2.0)


def test_understand_counts_tokens_as_steps() -> None:
    params = {"size": 512, "max_new_tokens": 320}
    assert work_steps("understand", params) == 20
    assert job_pixels("understand", params) == 512 * 512
    assert work_steps("generate", {"steps": 0}) == 1


def test_hard_limit_leaves_a_lease_of_grace() -> None:
    assert hard_limit_seconds(100, lease_seconds=60) == 160
    assert hard_limit_seconds(1000, lease_seconds=60) == 1250


def test_batch_clock_expiry() -> None:
    clock = BatchClock(soft_seconds=10, hard_seconds=20, started=0.0)  # started long ago (monotonic origin)
    assert clock.soft_expired() and clock.hard_expired()
    fresh = BatchClock(soft_seconds=1e6, hard_seconds=2e6)
    assert not fresh.soft_expired() and not fresh.hard_expired()


def test_a_batch_over_its_time_limit_fails_with_timeout(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    # Given a whole-batch runner whose batches may take half a second, and slow sampling steps (the continuous
    # loop counts each item's own steps: tests/workers/test_continuous_runner.py)
    runner = make_runner(FaultInjector(step_delay_seconds=0.3), time_limit_floor_seconds=0.5,
                         time_limit_seconds_per_megapixel_step=0.001, worker_batching="whole")
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=i, steps=6, tag="timeout")
            for i in range(2)]

    # When the batch runs past its limit
    assert runner.run(jobs[0].id) == 2

    # Then both jobs failed with timeout and wrote nothing
    for job in job_store.get_many([j.id for j in jobs]):
        assert (job.status, job.error_code) == ("failed", "timeout")
        assert not object_store.page(f"results/{job.id}/")
