"""The Celery wiring: tasks registered by name on the CPU app, the beat tick, and the single-event task."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.routing import DELIVER_WEBHOOK_TASK, DISPATCH_WEBHOOKS_TASK, WEBHOOK_QUEUE
from storage.tables import WebhookEvent
from tests.support.webhooks import JobDriver, Receiver
from workers.app import make_celery
from workers.webhooks.dispatcher import register


def test_tasks_and_beat_entry_are_registered(settings: Any) -> None:
    app = make_celery(settings)
    register(app, settings)
    assert {DISPATCH_WEBHOOKS_TASK, DELIVER_WEBHOOK_TASK} <= set(app.tasks)
    (entry,) = [e for e in app.conf.beat_schedule.values() if e["task"] == DISPATCH_WEBHOOKS_TASK]
    assert entry["schedule"] <= 1.0 and entry["options"]["queue"] == WEBHOOK_QUEUE
    assert app.conf.task_routes[DISPATCH_WEBHOOKS_TASK]["queue"] == WEBHOOK_QUEUE


def test_deliver_task_sends_one_due_event(
    settings: Any, receiver: Receiver, jobs: JobDriver, session_factory: Any, dispatcher: Any,
) -> None:
    app = make_celery(settings)
    register(app, settings)
    job = jobs.create(receiver.url + "/task", ["job.succeeded"])
    jobs.succeed(job)
    with session_factory() as s:
        event_id = s.scalars(select(WebhookEvent.id).where(WebhookEvent.job_id == job.id)).one()
    # run in process, through Celery's task machinery, with the dispatcher the task builds from settings
    assert app.tasks[DELIVER_WEBHOOK_TASK].apply(args=(event_id,)).get() == "delivered"
    assert receiver.wait_for(1)[0].headers["webhook-id"] == event_id
    assert app.tasks[DELIVER_WEBHOOK_TASK].apply(args=(event_id,)).get() is None  # nothing due any more
