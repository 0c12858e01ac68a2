"""Graceful shutdown: finish the batch when it fits in the grace period, release it to the queue otherwise."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import enqueue, make_jobs
from tests.support.waiting import wait_for, wait_terminal
from workers.shutdown import ShutdownGate


def test_nothing_is_abandoned_without_a_shutdown() -> None:
    assert not ShutdownGate(0).should_abandon(time.monotonic() - 1000, 0.01)


def test_a_batch_that_will_finish_in_time_is_kept() -> None:
    gate = ShutdownGate(grace_seconds=30)
    gate.request()
    # ran 1 s, 90% done: about 0.1 s left, well within the grace period
    assert not gate.should_abandon(time.monotonic() - 1.0, 0.9)


def test_a_batch_that_cannot_finish_in_time_is_abandoned() -> None:
    gate = ShutdownGate(grace_seconds=30)
    gate.request()
    # ran 100 s, 10% done: about 900 s left
    assert gate.should_abandon(time.monotonic() - 100.0, 0.1)
    assert not gate.should_abandon(time.monotonic() - 100.0, 0.0)  # no evidence yet: wait


def test_the_grace_period_running_out_abandons_everything() -> None:
    gate = ShutdownGate(grace_seconds=0)
    gate.request()
    assert gate.should_abandon(time.monotonic(), 0.99)


@pytest.mark.system  # starts model-worker processes
def test_sigterm_finishes_a_batch_that_fits_the_grace_period_and_releases_one_that_does_not(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any, registry: Any,
    tmp_path: Path,
) -> None:
    # Given two workers held mid-batch (each step past the 4th waits for a file): one with a long grace period
    # (generate), one with none (edit)
    release = tmp_path / "release-steps"
    patient = start_worker("patient", wait=False, UNIPIC_WORKER_KINDS="generate", UNIPIC_FAULT_HOLD_FILE=str(release),
                           UNIPIC_FAULT_HOLD_AFTER_STEPS="4", UNIPIC_WORKER_SHUTDOWN_GRACE_SECONDS="120")
    hasty = start_worker("hasty", wait=False, UNIPIC_WORKER_KINDS="edit", UNIPIC_FAULT_HOLD_FILE=str(release),
                         UNIPIC_FAULT_HOLD_AFTER_STEPS="4", UNIPIC_WORKER_SHUTDOWN_GRACE_SECONDS="0")
    patient.wait_ready(registry)
    hasty.wait_ready(registry)
    # each pair in one transaction: a worker woken meanwhile (a stale message) sees both jobs or neither
    finishing = make_jobs(job_store, object_store, owner_id, "generate", 64, seeds=(60, 61), steps=6, tag="term")
    releasing = make_jobs(job_store, object_store, owner_id, "edit", 64, seeds=(70, 71), steps=6, tag="term")
    enqueue(job_store, celery_app, [*finishing, *releasing], stamp_first=True)  # batches of two, never split
    everything = [j.id for j in [*finishing, *releasing]]
    wait_for(lambda: all(j.status == "running" and (j.progress_step or 0) >= 1
                         for j in job_store.get_many(everything)), "both batches to be mid-run")

    # When both receive SIGTERM (a deploy), and their held steps go on once both have taken it in
    patient.proc.send_signal(signal.SIGTERM)
    hasty.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: all("shutdown requested" in w.log() for w in (patient, hasty)), "both workers to stop")
    release.touch()
    assert patient.proc.wait(timeout=120) == 0 and hasty.proc.wait(timeout=120) == 0

    # Then the patient worker finished its batch before exiting
    finished = {j.id: j for j in job_store.get_many([j.id for j in finishing])}
    assert {j.status for j in finished.values()} == {"succeeded"}
    # and the hasty one handed its jobs back, queued again with attempts unchanged
    released = job_store.get_many([j.id for j in releasing])
    assert {(j.status, j.attempts) for j in released} == {("queued", 0)}
    assert "released 2 jobs" in hasty.log()

    # And a fresh worker completes the released jobs from the message the hasty worker re-sent
    fresh = start_worker("fresh")
    done = wait_terminal(job_store, [j.id for j in releasing], workers=[fresh, hasty])
    assert {(j.status, j.attempts) for j in done.values()} == {("succeeded", 0)}
