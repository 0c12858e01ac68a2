"""Fair scheduling end to end (issue 13): one tenant's bulk never starves another.

Real worker process, real broker and store. Tenant A submits a 200-job batch; once the worker is busy with it,
tenant B submits one job. Messages are FIFO in Redis (B's is behind A's 200), but each message only wakes the
worker: its claim takes the best queued job of the queue by the fair-share policy, so B runs as soon as the
worker is free, while A's bulk is still queued. Asserted on order and states, never on wall-clock time.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.jobs import enqueue, make_job, make_jobs
from tests.support.storage import add_owner
from tests.support.waiting import wait_for, wait_terminal

pytestmark = pytest.mark.system  # starts a model-worker process

BULK = 200




def test_one_job_of_tenant_b_runs_within_a_few_batches_while_tenant_a_bulk_waits(
    start_worker: Any, job_store: Any, object_store: Any, session_factory: Any, celery_app: Any
) -> None:
    worker = start_worker("fair", UNIPIC_WORKER_MAX_BATCH="4", UNIPIC_FAULT_STEP_DELAY_MS="20")
    tenant_a, tenant_b = add_owner(session_factory), add_owner(session_factory)

    # Given tenant A's bulk of 200 (batch priority), with the worker busy on it (made in one transaction, as the
    # API makes a batch: a worker taking a stale wake-up of this queue would run jobs made one by one as they came)
    bulk = make_jobs(job_store, object_store, tenant_a, "generate", 64, seeds=range(BULK), steps=4, priority=-10,
                     tag="fair-bulk")
    enqueue(job_store, celery_app, bulk, stamp_first=True)
    wait_for(lambda: job_store.counts_by_status(tenant_a)["running"] > 0, "A's bulk to start")

    # When tenant B submits one job (its message is behind all of A's)
    single = make_job(job_store, object_store, tenant_b, "generate", 64, seed=7, steps=2, priority=100,
                      tag="fair-single")
    enqueue(job_store, celery_app, [single], stamp_first=True)
    done = wait_terminal(job_store, [single.id], workers=[worker])[single.id]

    # Then B's job succeeded while most of A's bulk was still queued
    assert done.status == "succeeded"
    a_jobs = [j for j in job_store.get_many([b.id for b in bulk])]
    still_queued = [j for j in a_jobs if j.status == "queued"]
    assert len(still_queued) >= BULK // 2
    # and at most three of A's batches started between B's submission and B's start
    a_batches_before_b = {j.started_at for j in a_jobs
                          if j.started_at is not None and single.created_at < j.started_at <= done.started_at}
    assert len(a_batches_before_b) <= 3, sorted(a_batches_before_b)

    # (A's remaining bulk is canceled so the worker stops promptly)
    for job in still_queued:
        job_store.request_cancel(job.id, tenant_a)
