"""The CPU worker's Celery entry: `celery -A workers.cpu worker -B` (sweeper + webhook delivery). Torch-free.

It only builds the app and lets each task module register its tasks (and beat entries) on it.
"""

from __future__ import annotations

from storage.routing import MAINTENANCE_QUEUE, WEBHOOK_QUEUE
from storage.settings import get_settings
from workers import sweeper
from workers.app import make_celery, queue
from workers.webhooks import dispatcher as webhook_dispatcher

settings = get_settings()
app = make_celery(settings, name="unipic-cpu")
app.conf.task_queues = [queue(MAINTENANCE_QUEUE), queue(WEBHOOK_QUEUE)]

sweeper.register(app, settings)
webhook_dispatcher.register(app, settings)
