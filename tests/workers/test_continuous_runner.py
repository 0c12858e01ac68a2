"""The continuous runner in this process (the real store, S3 and tiny engine, without Celery): an item past its
own time limit fails `timeout` at the next step, and an item whose lease is lost leaves the set and writes
nothing. Faults are injected (a store that stops granting renewals, a file gate holding steps)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import make_job
from workers.faults import FaultInjector
from workers.leases import LeaseKeeper


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
    caplog.set_level(logging.WARNING, logger="workers.continuous")
    release.touch()
    thread.join(60)
    runner.drain()

    # Then the item left the set at the next step, without completing or writing anything
    assert served == [1]
    assert f"job {job.id}: lease lost; dropped without writing" in caplog.text
    left = job_store.get(job.id)
    assert left.status == "running" and left.result_keys is None
    assert not object_store.page(f"results/{job.id}/")
