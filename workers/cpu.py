"""The CPU worker's Celery entry: `celery -A workers.cpu worker -B` (sweeper + webhook delivery). Torch-free.

It only builds the app and lets each module register on it: the sweeper its task and beat entry, the webhook
dispatcher its loop, which runs on the worker's own threads (no task, no beat entry: it needs no broker).
Nothing is built at import: `configure(settings)` builds the app once, at start (`unipic cpu-worker` and `unipic beat` pass the
settings they made from their options); `celery -A workers.cpu` asks for the module's `app`, which builds it from
the `UNIPIC_*` environment on that first use.
"""

from __future__ import annotations

from celery import Celery

from storage.routing import MAINTENANCE_QUEUE
from storage.settings import Settings, load_settings
from workers import sweeper
from workers.app import make_celery, queue
from workers.webhooks import dispatcher as webhook_dispatcher

_app: Celery | None = None


def configure(settings: Settings | None = None) -> Celery:
    """This process's Celery app, built on the first call from `settings` (the environment's when None)."""
    global _app
    if _app is None:
        _app = make_cpu_app(settings if settings is not None else load_settings())
    return _app


def make_cpu_app(settings: Settings) -> Celery:
    app = make_celery(settings, name="unipic-cpu")
    app.conf.task_queues = [queue(MAINTENANCE_QUEUE)]
    sweeper.register(app, settings)
    webhook_dispatcher.register(app, settings)
    return app


def __getattr__(name: str) -> Celery:
    """`app` (what `celery -A workers.cpu` looks up), built on first use, never at import."""
    if name == "app":
        return configure()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
