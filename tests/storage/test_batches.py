"""BatchStore: counts, cancellation, jobs in submission order (paged); concurrent finishes complete a batch exactly once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event, select

from storage.errors import IllegalTransition, NotFound
from storage.jobs.store import JobStore
from storage.records import NewBatch
from storage.tables import WebhookEvent
from tests.support.claims import claim_job, lease_keys
from tests.support.storage import Stores, add_owner, job


def test_get_counts_and_owner(stores: Stores, compat: str) -> None:
    batch, recs = stores.jobs.create_many([job(stores.owner_id, compat, custom_id=f"c{i}") for i in range(4)],
                                          NewBatch(stores.owner_id, metadata={"run": 1}))
    assert batch is not None
    claim_job(stores.jobs, recs[0].id, "w", 30)
    got = stores.batches.get(batch.id, stores.owner_id)
    assert got.counts["queued"] == 3 and got.counts["running"] == 1 and got.metadata == {"run": 1}
    with pytest.raises(NotFound):
        stores.batches.get(batch.id, stores.new_owner())
    assert [j.custom_id for j in stores.batches.jobs(batch.id)] == ["c0", "c1", "c2", "c3"]
    # pages in submission order (the manifest reads 10,000 items this way): each follows the previous one's last
    first = stores.batches.jobs(batch.id, limit=3)
    rest = stores.batches.jobs(batch.id, after=first[-1], limit=3)
    assert [j.custom_id for j in first] == ["c0", "c1", "c2"] and [j.custom_id for j in rest] == ["c3"]
    assert stores.batches.jobs(batch.id, after=rest[-1], limit=3) == []
    assert batch.id in {b.id for b in stores.batches.page(stores.owner_id)[0]}


def test_cancel_batch(stores: Stores, compat: str) -> None:
    batch, recs = stores.jobs.create_many([job(stores.owner_id, compat) for _ in range(3)],
                                          NewBatch(stores.owner_id, webhook_url="http://127.0.0.1/b"))
    assert batch is not None
    [claim] = claim_job(stores.jobs, recs[0].id, "w", 30)
    canceled = stores.batches.cancel(batch.id, stores.owner_id)
    assert canceled.counts["canceled"] == 2 and canceled.counts["running"] == 1 and canceled.finished_at is None
    assert stores.jobs.cancel_requested_ids([recs[0].id]) == {recs[0].id}
    assert stores.jobs.cancel_running(claim)
    done = stores.batches.get(batch.id)
    assert done.status == "canceled" and done.finished_at is not None and done.canceled_at is not None
    with pytest.raises(IllegalTransition):
        stores.batches.cancel(batch.id, stores.owner_id)
    with stores.sessions() as s:
        kinds = [e.event_type for e in s.scalars(select(WebhookEvent).where(WebhookEvent.batch_id == batch.id))]
    assert sorted(kinds) == ["batch.completed"] + ["job.canceled"] * 3 + ["job.started"]


def test_concurrent_finishes_complete_the_batch_once(storage_jobs: JobStore, compat: str) -> None:
    # Given a running batch of 16 jobs
    job_store = storage_jobs
    owner = add_owner(job_store.sessions)
    batch, recs = job_store.create_many([job(owner, compat) for _ in range(16)],
                                        NewBatch(owner, webhook_url="http://127.0.0.1/b"))
    assert batch is not None
    claims = claim_job(job_store, recs[0].id, "w")  # then one claim per job, each with its own lease token
    claims += [c for _ in recs[1:] for c in job_store.claim_next(recs[0].queue, "w", 60, 1, 10**9)]
    assert sorted(c.job_id for c in claims) == sorted(r.id for r in recs)
    # When 16 threads finish them at once
    barrier = threading.Barrier(len(claims))

    def finish(claim: Any) -> None:
        barrier.wait()
        assert job_store.complete(claim, lease_keys(claim))

    threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the batch is completed and reported exactly once
    with job_store.sessions() as s:
        done = s.scalars(select(WebhookEvent).where(WebhookEvent.batch_id == batch.id,
                                                    WebhookEvent.event_type == "batch.completed")).all()
    assert len(done) == 1
    from storage.batches.store import BatchStore

    assert BatchStore(job_store.sessions).get(batch.id).status == "completed"


def test_finishing_a_job_that_is_not_the_batchs_last_counts_nothing(storage_jobs: JobStore, compat: str) -> None:
    # Given a running batch of three jobs, and every statement the store sends recorded
    owner = add_owner(storage_jobs.sessions)
    batch, recs = storage_jobs.create_many([job(owner, compat) for _ in range(3)], NewBatch(owner))
    assert batch is not None
    claims = claim_job(storage_jobs, recs[0].id, "w")
    claims += [c for _ in recs[1:] for c in storage_jobs.claim_next(recs[0].queue, "w", 60, 1, 10**9)]
    engine = storage_jobs.sessions.kw["bind"]
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.lower())

    event.listen(engine, "before_cursor_execute", record)
    try:
        # When all but the last finish: each looks for an open job of the batch, and counts none of its jobs
        # (a count of a 10,000-job batch at every finish, under the batch's lock, made finishing it quadratic)
        for claim in claims[:-1]:
            assert storage_jobs.complete(claim, lease_keys(claim))
        assert sent and not any("count(" in s for s in sent)
        # Then the last one counts once, for the batch.completed event
        assert storage_jobs.complete(claims[-1], lease_keys(claims[-1]))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sum("count(" in s for s in sent) == 1
    from storage.batches.store import BatchStore

    done = BatchStore(storage_jobs.sessions).get(batch.id)
    assert done.status == "completed" and done.counts["succeeded"] == 3
