"""JobStore: every legal and illegal transition, fencing, claiming rules, sweeping, outbox, idempotency.

Runs against Postgres and embedded SQLite (the `stores` fixture is parametrized)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from storage.errors import IdempotencyConflict, IllegalTransition, NotFound
from storage.records import Claim, NewBatch
from storage.tables import WebhookEvent, utcnow
from tests.support.claims import claim_job, claim_queue_of, lease_keys
from tests.support.storage import Stores, job


def claim_one(st: Stores, job_id: str, lease: float = 30.0) -> Claim:
    [claim] = claim_job(st.jobs, job_id, "w1", lease)
    return claim


def events(st: Stores, job_id: str) -> list[str]:
    with st.sessions() as s:
        rows = s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.id))
        return [r.event_type for r in rows]


# ---- legal paths ----------------------------------------------------------------------------------------------
def test_create_get_and_owner_isolation(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    assert rec.status == "queued" and rec.attempts == 0 and rec.pixels == 256 * 256
    assert rec.created_at.tzinfo is not None
    assert stores.jobs.get(rec.id, stores.owner_id).id == rec.id
    with pytest.raises(NotFound):
        stores.jobs.get(rec.id, stores.new_owner())
    with pytest.raises(NotFound):
        stores.jobs.get("00000000-0000-7000-8000-000000000000")


def test_queued_running_succeeded(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id)
    running = stores.jobs.get(rec.id)
    assert running.status == "running" and running.worker_id == "w1" and running.lease_token == claim.lease_token
    assert running.started_at is not None and running.batch_size == 1
    assert stores.jobs.set_progress(claim, 3, 8)
    assert stores.jobs.get(rec.id).progress_step == 3
    key = f"results/{rec.id}/{claim.lease_token}/0.png"
    ok = stores.jobs.complete(claim, [key], None, {"model_seconds": 1.5, "upload_seconds": 0.1}, "tiny", "abc")
    done = stores.jobs.get(rec.id)
    assert ok and done.status == "succeeded" and done.result_keys == [key]
    assert done.model_seconds == 1.5 and done.model_id == "tiny" and done.finished_at is not None


def test_running_failed_and_canceled(stores: Stores, compat: str) -> None:
    a, b = (stores.jobs.create(job(stores.owner_id, compat)) for _ in range(2))
    assert stores.jobs.fail(claim_one(stores, a.id), "model_error", "boom")
    failed = stores.jobs.get(a.id)
    assert failed.status == "failed" and (failed.error_code, failed.error_message) == ("model_error", "boom")
    claim_b = claim_one(stores, b.id)
    assert stores.jobs.request_cancel(b.id, stores.owner_id).cancel_requested
    assert stores.jobs.cancel_requested_ids([a.id, b.id]) == {b.id}
    assert stores.jobs.cancel_running(claim_b)
    assert stores.jobs.get(b.id).status == "canceled"


def test_cancel_queued_is_immediate(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    with pytest.raises(NotFound):
        stores.jobs.request_cancel(rec.id, stores.new_owner())
    canceled = stores.jobs.request_cancel(rec.id, stores.owner_id)
    assert canceled.status == "canceled" and canceled.error_code == "canceled"
    assert claim_queue_of(stores.jobs, rec.id, "w1", 30, 8) == []


def test_release_keeps_attempts(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id)
    assert stores.jobs.release([claim]) == 1
    back = stores.jobs.get(rec.id)
    assert back.status == "queued" and back.attempts == 0 and back.lease_token is None
    assert not stores.jobs.complete(claim, [])  # the released claim is dead
    claim_one(stores, rec.id)


# ---- illegal moves and fencing ----------------------------------------------------------------------------------
def test_progress_is_clamped_to_its_total(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id)
    assert stores.jobs.set_progress(claim, 1000000, 1)
    running = stores.jobs.get(rec.id)
    assert (running.progress_step, running.progress_total) == (1, 1)
    assert stores.jobs.set_progress(claim, 5, 0)  # no total: ignored
    assert stores.jobs.get(rec.id).progress_total == 1
    stores.jobs.release([claim])


def test_progress_of_several_jobs_is_one_write_fenced_per_row(stores: Stores, compat: str) -> None:
    # Given two running jobs, one of which another worker claimed again after this one lost its lease
    kept_rec, lost_rec = (stores.jobs.create(job(stores.owner_id, compat)) for _ in range(2))
    kept = claim_one(stores, kept_rec.id)
    old = claim_one(stores, lost_rec.id, lease=0.001)
    assert lost_rec.id in stores.jobs.requeue_expired(utcnow() + timedelta(seconds=1))
    new = claim_one(stores, lost_rec.id)
    # When the first worker reports both in one write
    held = stores.jobs.set_progress_many([(kept, 1000, 8), (old, 5, 8)])
    # Then its own job moved (clamped to its total) and the stale claim changed nothing, without failing the other
    assert held == {kept_rec.id}
    assert (stores.jobs.get(kept_rec.id).progress_step, stores.jobs.get(kept_rec.id).progress_total) == (8, 8)
    assert stores.jobs.get(lost_rec.id).progress_step == 0  # as the new claim left it
    assert stores.jobs.set_progress_many([(new, 2, 8), (kept, 3, 0)]) == {lost_rec.id, kept_rec.id}  # no total: kept
    assert stores.jobs.get(lost_rec.id).progress_step == 2 and stores.jobs.get(kept_rec.id).progress_step == 8
    stores.jobs.release([kept, new])


@pytest.mark.parametrize("leaves", ["released", "lease expired"])
def test_a_running_job_asked_to_cancel_that_leaves_its_worker_ends_canceled_not_queued(
    stores: Stores, compat: str, leaves: str,
) -> None:
    # Given a running job whose owner asked to cancel it, before its worker acknowledged the request
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id, lease=0.001 if leaves == "lease expired" else 30.0)
    stores.jobs.request_cancel(rec.id, stores.owner_id)
    # When it leaves the worker: handed back (a shutdown, an out-of-memory split) or its lease lost
    if leaves == "released":
        assert stores.jobs.release([claim]) == 0
    else:
        assert stores.jobs.requeue_expired(utcnow() + timedelta(seconds=1)) == []
    # Then it is canceled, and no claim runs it again
    done = stores.jobs.get(rec.id)
    assert (done.status, done.error_code, done.lease_token) == ("canceled", "canceled", None)
    assert done.finished_at is not None
    assert claim_queue_of(stores.jobs, rec.id, "w2", 30, 8) == []


def test_terminal_states_never_change(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id)
    assert stores.jobs.complete(claim, [f"results/{rec.id}/{claim.lease_token}/0.png"])
    before = stores.jobs.get(rec.id)
    assert not stores.jobs.fail(claim, "model_error", "late")
    assert not stores.jobs.cancel_running(claim)
    assert not stores.jobs.complete(claim, [f"results/{rec.id}/{claim.lease_token}/1.png"])
    assert not stores.jobs.set_progress(claim, 1, 2)
    assert stores.jobs.renew([claim], 30) == []
    assert stores.jobs.release([claim]) == 0
    assert claim_queue_of(stores.jobs, rec.id, "w2", 30, 8) == []
    with pytest.raises(IllegalTransition):
        stores.jobs.request_cancel(rec.id, stores.owner_id)
    assert rec.id not in stores.jobs.requeue_expired(utcnow() + timedelta(days=1))
    assert stores.jobs.get(rec.id) == before


@pytest.mark.parametrize("terminal", ["canceled", "failed", "expired"])
def test_other_terminal_states_are_final(stores: Stores, compat: str, terminal: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat, deadline_at=utcnow() + timedelta(seconds=60)))
    if terminal == "canceled":
        stores.jobs.request_cancel(rec.id, stores.owner_id)
    elif terminal == "failed":
        stores.jobs.fail(claim_one(stores, rec.id), "invalid_input", "bad")
    else:
        assert rec.id in stores.jobs.expire_overdue(utcnow() + timedelta(seconds=61))
    before = stores.jobs.get(rec.id)
    assert before.status == terminal
    assert claim_queue_of(stores.jobs, rec.id, "w2", 30, 8) == []
    with pytest.raises(IllegalTransition):
        stores.jobs.request_cancel(rec.id, None)
    stores.jobs.expire_overdue(utcnow() + timedelta(days=2))
    stores.jobs.requeue_expired(utcnow() + timedelta(days=2))
    assert stores.jobs.get(rec.id) == before


def test_stale_lease_token_cannot_overwrite(stores: Stores, compat: str) -> None:
    # Given a job whose first worker lost its lease and a second worker that claimed it again
    rec = stores.jobs.create(job(stores.owner_id, compat))
    old = claim_one(stores, rec.id, lease=0.001)
    assert rec.id in stores.jobs.requeue_expired(utcnow() + timedelta(seconds=1))
    new = claim_one(stores, rec.id)
    assert new.lease_token != old.lease_token
    # When the first worker wakes up and writes, Then every write is refused
    assert not stores.jobs.complete(old, [f"results/{rec.id}/{old.lease_token}/0.png"])
    assert not stores.jobs.fail(old, "model_error", "stale")
    assert not stores.jobs.cancel_running(old)
    assert not stores.jobs.set_progress(old, 5, 8)
    assert stores.jobs.renew([old, new], 30) == [new]
    assert stores.jobs.release([old]) == 0
    assert stores.jobs.get(rec.id).status == "running"
    fresh = f"results/{rec.id}/{new.lease_token}/0.png"
    assert stores.jobs.complete(new, [fresh])
    assert stores.jobs.get(rec.id).result_keys == [fresh]


# ---- claiming rules ---------------------------------------------------------------------------------------------
def test_claim_respects_compat_key_priority_age_and_max_items(stores: Stores, compat: str) -> None:
    seed = stores.jobs.create(job(stores.owner_id, compat))
    old_low = stores.jobs.create(job(stores.owner_id, compat))
    high = stores.jobs.create(job(stores.owner_id, compat, priority=5))
    newer_low = stores.jobs.create(job(stores.owner_id, compat))
    other = stores.jobs.create(job(stores.owner_id, compat + "-other", priority=1))
    # the highest priority seeds the claim; batch-mates share its compat key, oldest first, up to max_items
    claims = claim_job(stores.jobs, high.id, "w1", 30, max_items=3)
    assert [c.job_id for c in claims] == [high.id, seed.id, old_low.id]
    assert stores.jobs.get(newer_low.id).status == "queued" and stores.jobs.get(other.id).status == "queued"
    assert {stores.jobs.get(c.job_id).batch_size for c in claims} == {3}
    # a message for a job already taken claims what its queue holds next: another compat key, another batch
    assert [c.job_id for c in claim_queue_of(stores.jobs, high.id, "w2", 30, 8)] == [other.id]
    assert [c.job_id for c in claim_queue_of(stores.jobs, high.id, "w2", 30, 8)] == [newer_low.id]
    assert claim_queue_of(stores.jobs, high.id, "w2", 30, 8) == []


def test_claim_respects_max_pixels_and_kinds(stores: Stores, compat: str) -> None:
    seed = stores.jobs.create(job(stores.owner_id, compat))  # 65,536 px
    big = stores.jobs.create(job(stores.owner_id, compat, num_images=4))  # 262,144 px: does not fit
    small = stores.jobs.create(job(stores.owner_id, compat))
    assert claim_queue_of(stores.jobs, seed.id, "w1", 30, 8, kinds=["understand"]) == []
    claims = claim_job(stores.jobs, seed.id, "w1", 30, max_items=8, max_pixels=2 * 256 * 256)
    assert [c.job_id for c in claims] == [seed.id, small.id]
    assert stores.jobs.get(big.id).status == "queued"
    # the seed is always taken, even alone over budget
    assert [c.job_id for c in claim_job(stores.jobs, big.id, "w1", 30, max_items=8, max_pixels=1)] == [big.id]


def test_claim_skips_overdue_partners(stores: Stores, compat: str) -> None:
    seed = stores.jobs.create(job(stores.owner_id, compat))
    overdue = stores.jobs.create(job(stores.owner_id, compat, deadline_at=utcnow() - timedelta(seconds=1)))
    assert [c.job_id for c in claim_job(stores.jobs, seed.id, "w1", 30, max_items=8)] == [seed.id]
    assert overdue.id in stores.jobs.expire_overdue()
    assert stores.jobs.get(overdue.id).error_code == "expired"


# ---- sweeping ---------------------------------------------------------------------------------------------------
def test_expired_leases_requeue_then_fail_worker_lost(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat, max_attempts=3, webhook_url="http://127.0.0.1/h"))
    later = utcnow() + timedelta(seconds=5)
    for attempt in (1, 2):
        claim_one(stores, rec.id, lease=1)
        assert rec.id not in stores.jobs.requeue_expired(utcnow())  # lease still valid
        assert rec.id in stores.jobs.requeue_expired(later)
        back = stores.jobs.get(rec.id)
        assert back.status == "queued" and back.attempts == attempt and back.worker_id is None
    claim_one(stores, rec.id, lease=1)
    assert rec.id not in stores.jobs.requeue_expired(later)
    lost = stores.jobs.get(rec.id)
    assert lost.status == "failed" and lost.error_code == "worker_lost" and lost.attempts == 3
    assert events(stores, rec.id) == ["job.started"] * 3 + ["job.failed"]


def test_renew_extends_lease(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    claim = claim_one(stores, rec.id, lease=1)
    assert stores.jobs.renew([claim], 3600) == [claim]
    assert rec.id not in stores.jobs.requeue_expired(utcnow() + timedelta(seconds=60))


def test_stale_queued_and_mark_enqueued(stores: Stores, compat: str) -> None:
    rec = stores.jobs.create(job(stores.owner_id, compat))
    assert rec.id in {r.id for r in stores.jobs.stale_queued(0, limit=100_000)}
    stores.jobs.mark_enqueued([rec.id])
    assert rec.id not in {r.id for r in stores.jobs.stale_queued(3600, limit=100_000)}


# ---- outbox, batches, idempotency, listing -------------------------------------------------------------------------
def test_outbox_rows_follow_subscriptions(stores: Stores, compat: str) -> None:
    subscribed = stores.jobs.create(job(stores.owner_id, compat, webhook_url="http://127.0.0.1/a",
                                        webhook_events=["job.succeeded"]))
    silent = stores.jobs.create(job(stores.owner_id, compat))
    for rec in (subscribed, silent):
        claim = claim_one(stores, rec.id)
        assert stores.jobs.complete(claim, lease_keys(claim))
    assert events(stores, subscribed.id) == ["job.succeeded"]
    assert events(stores, silent.id) == []
    with stores.sessions() as s:
        row = s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == subscribed.id)).one()
    assert row.id.startswith("msg_") and row.status == "pending" and row.url == "http://127.0.0.1/a"
    assert row.payload["type"] == "job.succeeded" and row.payload["data"]["status"] == "succeeded"


def test_outbox_row_is_in_the_same_transaction(stores: Stores, compat: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a state change whose outbox write fails, Then the state change is rolled back with it
    from storage.webhooks import outbox

    rec = stores.jobs.create(job(stores.owner_id, compat, webhook_url="http://127.0.0.1/a"))
    claim = claim_one(stores, rec.id)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("outbox down")

    monkeypatch.setattr(outbox.OutboxWriter, "_add", broken)
    with pytest.raises(RuntimeError):
        stores.jobs.complete(claim, lease_keys(claim))
    assert stores.jobs.get(rec.id).status == "running"


def test_owner_default_endpoint_gets_events(stores: Stores, compat: str) -> None:
    owner = stores.new_owner(default_webhook_url="http://127.0.0.1/default")
    rec = stores.jobs.create(job(owner, compat))
    claim = claim_one(stores, rec.id)
    stores.jobs.complete(claim, lease_keys(claim))
    assert events(stores, rec.id) == ["job.started", "job.succeeded"]


def test_batch_finishes_with_its_last_job(stores: Stores, compat: str) -> None:
    batch, recs = stores.jobs.create_many([job(stores.owner_id, compat) for _ in range(3)],
                                          NewBatch(stores.owner_id, webhook_url="http://127.0.0.1/b",
                                                   webhook_events=["batch.completed"]))
    assert batch is not None and batch.total == 3 and all(r.batch_id == batch.id for r in recs)
    claims = claim_job(stores.jobs, recs[0].id, "w1", 30, max_items=8)
    assert len(claims) == 3
    stores.jobs.complete(claims[0], lease_keys(claims[0]))
    stores.jobs.fail(claims[1], "model_error", "x")
    assert stores.batches.get(batch.id).finished_at is None
    stores.jobs.cancel_running(claims[2])
    done = stores.batches.get(batch.id)
    assert done.status == "completed" and done.finished_at is not None
    assert (done.counts["succeeded"], done.counts["failed"], done.counts["canceled"]) == (1, 1, 1)
    with stores.sessions() as s:
        rows = s.scalars(select(WebhookEvent).where(WebhookEvent.batch_id == batch.id)).all()
    assert [r.event_type for r in rows] == ["batch.completed"]
    assert rows[0].payload["data"]["counts"]["succeeded"] == 1


def test_idempotency(stores: Stores, compat: str) -> None:
    first = stores.jobs.create(job(stores.owner_id, compat, idempotency_key="k1", request_hash="h1"))
    again = stores.jobs.create(job(stores.owner_id, compat, idempotency_key="k1", request_hash="h1"))
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        stores.jobs.create(job(stores.owner_id, compat, idempotency_key="k1", request_hash="h2"))
    other_owner = stores.jobs.create(job(stores.new_owner(), compat, idempotency_key="k1", request_hash="h2"))
    assert other_owner.id != first.id


def test_list_pagination_counts_and_position(stores: Stores, compat: str) -> None:
    recs = [stores.jobs.create(job(stores.owner_id, compat, priority=p, queue=compat)) for p in (0, 0, 1, 0, 0)]
    page, cursor = stores.jobs.page(stores.owner_id, limit=2)
    assert [r.id for r in page] == [recs[4].id, recs[3].id] and cursor
    page2, cursor2 = stores.jobs.page(stores.owner_id, limit=2, cursor=cursor)
    page3, cursor3 = stores.jobs.page(stores.owner_id, limit=2, cursor=cursor2)
    assert [r.id for r in page + page2 + page3] == [r.id for r in reversed(recs)] and cursor3 is None
    assert stores.jobs.page(stores.owner_id, cursor="not-an-id") == ([], None)
    stores.jobs.request_cancel(recs[0].id, stores.owner_id)
    assert [r.id for r in stores.jobs.page(stores.owner_id, status="canceled")[0]] == [recs[0].id]
    counts = stores.jobs.counts_by_status(stores.owner_id)
    assert counts["queued"] == 4 and counts["canceled"] == 1 and counts["running"] == 0
    assert stores.jobs.active_count(stores.owner_id) == 4
    positions = [stores.jobs.queue_position(stores.jobs.get(r.id)) for r in recs[1:]]
    assert positions == [1, 0, 2, 3]
    # jobs created together (one created_at) still page newest-first by id
    _, batch_recs = stores.jobs.create_many([job(stores.owner_id, compat, queue="other") for _ in range(3)])
    assert [r.id for r in stores.jobs.page(stores.owner_id, limit=3)[0]] == [r.id for r in reversed(batch_recs)]
    assert len(stores.jobs.page(stores.owner_id, limit=100)[0]) == 8
    for r in batch_recs:
        stores.jobs.request_cancel(r.id, stores.owner_id)
