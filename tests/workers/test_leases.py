"""Lease renewal: held leases are extended; a lease taken away is noticed and its job is never completed."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from tests.support.claims import claim_job
from tests.support.jobs import make_job
from tests.support.waiting import wait_for
from workers.faults import FaultInjector
from workers.runner.leases import LeaseKeeper


def test_renewal_extends_held_leases_and_records_lost_ones(
    job_store: Any, object_store: Any, owner_id: str
) -> None:
    # Given two claimed jobs, one of whose leases then expires and is reclaimed by the sweeper's requeue
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=i, tag="renew") for i in range(2)]
    claims = claim_job(job_store, jobs[0].id, "lease-test", 30.0, max_items=2)
    assert len(claims) == 2
    expiring = {c.job_id: c for c in claims}[jobs[1].id]
    job_store.renew([expiring], 0.01)
    past_it = job_store.get(jobs[1].id).lease_expires_at + timedelta(milliseconds=1)
    assert jobs[1].id in job_store.requeue_expired(now=past_it)
    before = job_store.get(jobs[0].id).lease_expires_at

    # When the keeper renews
    keeper = LeaseKeeper(job_store, claims, lease_seconds=60.0)
    keeper.renew_now()

    # Then the held lease got longer and the other is recorded lost
    assert job_store.get(jobs[0].id).lease_expires_at > before
    assert keeper.lost() == {jobs[1].id}


def test_a_job_whose_lease_is_lost_mid_batch_is_dropped_and_its_mates_finish(
    make_runner: Any, job_store: Any, object_store: Any, owner_id: str
) -> None:
    # Given a batch of two running with short leases (renewed every 0.2 s) and slow steps
    # (whole-batch: a continuous loop claims the released job again; tests/workers/test_continuous_runner.py)
    runner = make_runner(FaultInjector(step_delay_seconds=0.25), lease_seconds=0.6, worker_batching="whole")
    jobs = [make_job(job_store, object_store, owner_id, "generate", 64, seed=80 + i, steps=8, tag="lost")
            for i in range(2)]
    kept, lost = jobs
    thread = threading.Thread(target=runner.run, args=(kept.id,))
    thread.start()

    # When another party takes one job away (its claim is released under the worker)
    wait_for(lambda: job_store.get(lost.id).status == "running", "the batch to start")
    assert job_store.release([job_store.get(lost.id).claim]) == 1
    thread.join(timeout=120)

    # Then the worker never wrote it, and its batch-mate succeeded
    assert job_store.get(lost.id).status == "queued"
    assert not object_store.page(f"results/{lost.id}/")
    assert job_store.get(kept.id).status == "succeeded"


def test_a_renewal_that_cannot_be_made_counts_as_a_lost_lease(
    job_store: Any, object_store: Any, owner_id: str, monkeypatch: Any,
) -> None:
    from sqlalchemy.exc import OperationalError

    # Given a claimed job whose keeper holds it
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=21, tag="renew-fails")
    claims = claim_job(job_store, job.id, "lease-test")
    keeper = LeaseKeeper(job_store, claims, lease_seconds=60.0)
    assert keeper.holds(job.id)

    # When a renewal fails on the way to the database (the fault injected in the store's renew)
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OperationalError("renew", {}, Exception("connection refused"))

    monkeypatch.setattr(job_store, "renew", unreachable)
    keeper.renew_now()

    # Then the worker can no longer prove its lease: the job is lost and nothing may be written for it
    assert keeper.lost() == {job.id} and not keeper.holds(job.id)
    monkeypatch.undo()
    job_store.release(claims)
