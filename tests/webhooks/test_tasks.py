"""The Celery wiring: the dispatch task registered by name on the CPU app, its beat tick, and one run of it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.routing import DISPATCH_WEBHOOKS_TASK, WEBHOOK_QUEUE
from storage.tables import WebhookEvent
from tests.support.webhooks import JobDriver, Receiver
from workers.app import make_celery
from workers.webhooks.dispatcher import register


def test_tasks_and_beat_entry_are_registered(settings: Any) -> None:
    app = make_celery(settings)
    register(app, settings)
    assert DISPATCH_WEBHOOKS_TASK in app.tasks
    (entry,) = [e for e in app.conf.beat_schedule.values() if e["task"] == DISPATCH_WEBHOOKS_TASK]
    assert entry["schedule"] <= 1.0 and entry["options"]["queue"] == WEBHOOK_QUEUE
    assert app.conf.task_routes[DISPATCH_WEBHOOKS_TASK]["queue"] == WEBHOOK_QUEUE


def test_dispatch_task_sends_the_due_event(
    settings: Any, receiver: Receiver, jobs: JobDriver, session_factory: Any, dispatcher: Any,
) -> None:
    app = make_celery(settings)
    register(app, settings)
    job = jobs.create(receiver.url + "/task", ["job.succeeded"])
    jobs.succeed(job)
    with session_factory() as s:
        event_id = s.scalars(select(WebhookEvent.id).where(WebhookEvent.job_id == job.id)).one()
    # run in process, through Celery's task machinery, with the dispatcher the task builds from settings
    assert app.tasks[DISPATCH_WEBHOOKS_TASK].apply().get() == {"delivered": 1}
    assert receiver.wait_for(1)[0].headers["webhook-id"] == event_id
    assert app.tasks[DISPATCH_WEBHOOKS_TASK].apply().get() == {}  # nothing due any more
