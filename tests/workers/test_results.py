"""Writing results: under the lease's own keys, only while the lease is held, so a worker that lost its lease
can never change what a user downloads (direct transport: the real store and S3)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from storage.lifecycle.store import Lifecycle
from tests.support.claims import claim_job, sweep_stale_results_of
from tests.support.jobs import make_job
from workers.runner.leases import LeaseKeeper
from workers.runner.results import LeaseLost, write_result


def _image_result(color: tuple[int, int, int]) -> Any:
    return SimpleNamespace(images=[Image.new("RGB", (64, 64), color)])


def test_a_reclaimed_worker_writing_after_success_does_not_change_the_served_bytes(
    job_store: Any, object_store: Any, owner_id: str,
) -> None:
    # Given worker 1 claimed job J, and its lease expired and the sweeper reclaimed it
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=11, tag="stale-write")
    [stale] = claim_job(job_store, job.id, "w1")
    job_store.renew([stale], 0.01)
    assert job.id in job_store.requeue_expired(now=job_store.get(job.id).lease_expires_at + timedelta(seconds=1))
    # and worker 2 claimed J, wrote its result and completed it
    [fresh] = claim_job(job_store, job.id, "w2")
    record = job_store.get(job.id)
    written = write_result(object_store, record, fresh.lease_token, _image_result((0, 0, 255)), "tiny")
    assert job_store.complete(fresh, written.keys)
    served = {k: object_store.get(k) for k in job_store.get(job.id).result_keys}

    # When worker 1 wakes up: its renewal is refused, so it does not write at all
    keeper = LeaseKeeper(job_store, [stale], lease_seconds=60.0)
    keeper.renew_now()
    assert not keeper.holds(job.id)
    with pytest.raises(LeaseLost):
        write_result(object_store, record, stale.lease_token,
                     _image_result((255, 0, 0)), "tiny", still_held=lambda: keeper.holds(job.id))
    assert object_store.page(f"results/{job.id}/") == sorted(served)
    # and even a write that raced its check lands under its own lease, is never recorded and is swept
    late = write_result(object_store, record, stale.lease_token, _image_result((255, 0, 0)), "tiny")
    assert not job_store.complete(stale, late.keys)

    # Then the owner downloads worker 2's bytes, unchanged
    done = job_store.get(job.id)
    assert {k: object_store.get(k) for k in done.result_keys} == served
    sweep_stale_results_of(Lifecycle(job_store.sessions, object_store), job.id)
    assert object_store.page(f"results/{job.id}/") == sorted(served)


def test_a_complete_naming_another_leases_keys_is_refused(job_store: Any, object_store: Any, owner_id: str) -> None:
    from storage.errors import ForeignResultKeys

    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=12, tag="foreign-keys")
    [claim] = claim_job(job_store, job.id, "w1")
    for keys in ([f"results/{job.id}/0.png"], [f"results/{job.id}/another-lease/0.png"], ["inputs/x/image.png"]):
        with pytest.raises(ForeignResultKeys):
            job_store.complete(claim, keys)
    assert job_store.get(job.id).status == "running"
    job_store.release([claim])
