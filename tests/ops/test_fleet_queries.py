"""storage.fleet.queries: the scrape-time fleet snapshot (per-queue depth and age, running, live workers, outbox)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from storage.fleet.queries import ALL_GPU_QUEUES, FleetQueries
from storage.fleet.registry import WorkerRegistry
from storage.jobs.ids import new_id
from storage.tables import WebhookEvent, Worker, utcnow
from tests.support.storage import job


def test_every_known_queue_is_reported_even_when_empty(session_factory: Any) -> None:
    snap = FleetQueries(session_factory, 30).snapshot()
    assert set(ALL_GPU_QUEUES) <= set(snap.queues)
    assert "unipic.generate.xl" in snap.queues and "unipic.understand.s" in snap.queues


def test_depth_oldest_age_and_running_per_queue(session_factory: Any, job_store: Any, owner_id: str) -> None:
    # Given three jobs in a queue of their own, one of them claimed (running)
    queue = f"unipic.generate.t{new_id()[-8:]}"
    compat = f"generate:{new_id()}"
    made = [job_store.create(job(owner_id, compat, queue=queue)) for _ in range(3)]
    claims = job_store.claim_next(queue, "w1", 60, 1, 1 << 40)
    assert len(claims) == 1
    first_queued = min(j.created_at for j in made if j.id != claims[0].job_id)
    # When a snapshot is taken a minute later
    now = utcnow() + timedelta(seconds=60)
    state = FleetQueries(session_factory, 30).snapshot(now).queues[queue]
    # Then it counts two queued and one running, the oldest queued one a minute old (or a little more)
    assert (state.queued, state.running) == (2, 1)
    assert state.oldest_queued_seconds >= (now - first_queued).total_seconds() - 1


def test_live_workers_by_queue_and_device_exclude_stale_and_stopped(session_factory: Any) -> None:
    registry = WorkerRegistry(session_factory)
    queue = f"unipic.edit.t{new_id()[-8:]}"
    alive, stopped, stale = (f"w-{new_id()}" for _ in range(3))
    registry.register(alive, "h", 1, device="cuda:1", queues=[queue])
    registry.register(stopped, "h", 2, device="cuda:0", queues=[queue])
    registry.stop(stopped)
    registry.register(stale, "h", 3, device="cpu", queues=[queue])
    with session_factory.begin() as s:
        s.execute(update(Worker).where(Worker.id == stale).values(last_heartbeat_at=utcnow() - timedelta(hours=1)))
    live = FleetQueries(session_factory, 30).snapshot().live_workers
    assert live.get((queue, "cuda")) == 1
    assert (queue, "cpu") not in live


def test_webhook_backlog_and_oldest_pending_age(session_factory: Any, owner_id: str) -> None:
    before = FleetQueries(session_factory, 30).snapshot()
    created = utcnow() - timedelta(minutes=30)
    with session_factory.begin() as s:
        for status in ("pending", "pending", "delivered"):
            s.add(WebhookEvent(id=f"msg_{new_id()}", owner_id=owner_id, event_type="job.succeeded",
                               url="https://example.com/hook", status=status, created_at=created, payload={}))
    after = FleetQueries(session_factory, 30).snapshot()
    assert after.webhook_backlog == before.webhook_backlog + 2
    assert after.webhook_oldest_pending_seconds >= 30 * 60
