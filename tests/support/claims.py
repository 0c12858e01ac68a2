"""Playing a worker's claim in tests, on the path production takes: `JobStore.claim_next` on the job's queue.

A claim takes the best queued jobs of a whole queue under the scheduling policy, whoever submitted them, and
tests share a storage schema. So `claim_job` first cancels what other API keys left queued in that queue
(`tests.support.jobs.cancel_leftover_jobs`), then claims the queue as a `run_batch` message does, and checks that
the policy seeded the claim with the test's job (the owner's highest priority, then oldest, queued job).
Knows `JobStore`'s public methods; knows nothing of fixtures or workers.
"""

from __future__ import annotations

from storage.jobs import JobStore
from storage.records import Claim
from tests.support.jobs import cancel_leftover_jobs


def claim_job(store: JobStore, job_id: str, worker_id: str = "test-worker", lease_seconds: float = 60.0,
              max_items: int = 1, max_pixels: int = 1 << 40) -> list[Claim]:
    """Claim `job_id` (first) and, with `max_items` > 1, its batch-mates, as a worker on its queue would."""
    job = store.get(job_id)
    cancel_leftover_jobs(store.sessions, except_owner=job.owner_id, queue=job.queue)
    claims = store.claim_next(job.queue, worker_id, lease_seconds, max_items, max_pixels)
    assert claims and claims[0].job_id == job_id, f"the claim of {job.queue} took {claims}, not {job_id}"
    return claims
