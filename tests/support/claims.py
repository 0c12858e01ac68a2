"""Playing a worker's claim in tests, on the path production takes: a `run_batch(job_id)` message is a wake-up
for the job's queue, and the worker claims that queue (`JobStore.claim_for_message`, i.e. `claim_next`).

A claim takes the best queued jobs of a whole queue under the scheduling policy, whoever submitted them, and
tests share a storage schema. So these helpers first cancel what other API keys left queued in that queue
(`tests.support.jobs.cancel_leftover_jobs`); `claim_job` then checks that the policy seeded the claim with the
test's job (its owner's highest priority, then oldest, queued job of the queue).
Knows `JobStore`'s public methods; knows nothing of fixtures or workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.jobs.store import JobStore
from storage.records import Claim
from tests.support.jobs import cancel_leftover_jobs


def claim_queue_of(store: JobStore, job_id: str, worker_id: str = "test-worker", lease_seconds: float = 60.0,
                   max_items: int = 1, max_pixels: int = 1 << 40,
                   kinds: Sequence[str] | None = None) -> list[Claim]:
    """What a worker woken by `job_id`'s message claims, whichever jobs the policy picks (empty: none)."""
    job = store.get(job_id)
    cancel_leftover_jobs(store.sessions, except_owner=job.owner_id, queue=job.queue)
    return store.claim_for_message(job_id, worker_id, lease_seconds, max_items, max_pixels, kinds)


def claim_job(store: JobStore, job_id: str, worker_id: str = "test-worker", lease_seconds: float = 60.0,
              max_items: int = 1, max_pixels: int = 1 << 40) -> list[Claim]:
    """Claim `job_id` (first) and, with `max_items` > 1, its batch-mates, as a worker on its queue would."""
    claims = claim_queue_of(store, job_id, worker_id, lease_seconds, max_items, max_pixels)
    assert claims and claims[0].job_id == job_id, f"the claim took {[c.job_id for c in claims]}, not {job_id}"
    return claims


def lease_keys(claim: Claim, count: int = 1, ext: str = "png") -> list[str]:
    """The result keys a claim's lease may write (`results/{job}/{lease}/{i}.{ext}`, storage.objects.base): what a
    test that plays the worker passes to `complete`."""
    from storage.objects.base import result_key

    return [result_key(claim.job_id, claim.lease_token, i, ext) for i in range(count)]


def sweep_stale_results_of(lifecycle: Any, job_id: str) -> None:
    """Run the stale-results sweep (no grace) until it has swept `job_id` (it walks every finished job of the
    shared schema, oldest first, a bounded batch per pass)."""
    from datetime import timedelta

    from storage.tables import utcnow

    while True:
        swept = lifecycle.sweep_stale_results(0, now=utcnow() + timedelta(seconds=1))
        if job_id in swept or not swept:
            return
