"""Putting accepted jobs on the broker: one `run_batch` message per job, by task name.

The API builds its own minimal Celery app (broker URL only, JSON messages, no result backend) and sends by name
with `send_task`, with task and queue names from `storage.routing`, so it never imports the worker code, torch
or the model. Sends reuse one producer (one connection) per call and go out through kombu's producer batch
(one Redis pipeline per thousand messages), which keeps a 10,000-item batch fast. After sending,
`JobStore.mark_enqueued` stamps `last_enqueued_at` once for all of them; a job whose send failed stays `queued` in Postgres and the sweeper re-enqueues it, so a broker hiccup loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from celery import Celery

from storage.routing import RUN_BATCH_TASK
from storage.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_BATCH = 1000  # Redis commands per pipeline round trip


class Enqueueable(Protocol):
    id: str
    queue: str


def make_sender(settings: Settings) -> Celery:
    """A send-only Celery app for `settings.broker_url` (never started as a worker)."""
    app = Celery("unipic-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        timezone="UTC",
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # fail fast when Redis is down: the job is safe in Postgres and the sweeper re-enqueues it
        app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 3, "max_retries": 2}
    return app


def _pipelined(producer: Any) -> AbstractContextManager[Any]:
    """Kombu's producer batch (one Redis pipeline per PUBLISH_BATCH messages) where the version has it."""
    batch = getattr(producer, "batch", None)
    return batch(PUBLISH_BATCH) if batch is not None else nullcontext()


class Enqueuer:
    """Sends job messages and records that they were sent."""

    def __init__(self, settings: Settings, job_store: Any) -> None:
        self.celery = make_sender(settings)
        self.job_store = job_store

    def enqueue(self, jobs: Sequence[Enqueueable]) -> list[str]:
        """Send one message per job (one producer for all), then mark them enqueued; returns the ids sent."""
        sent: list[str] = []
        if not jobs:
            return sent
        try:
            with self.celery.producer_or_acquire() as producer, _pipelined(producer):
                for job in jobs:
                    self.celery.send_task(RUN_BATCH_TASK, args=[job.id], queue=job.queue, producer=producer)
                    sent.append(job.id)
        except Exception:  # noqa: BLE001 - the jobs are safe in Postgres; the sweeper re-enqueues them
            log.exception("enqueue failed after %d of %d jobs (first %s); the sweeper will re-enqueue",
                          len(sent), len(jobs), jobs[0].id)
        if sent:
            self.job_store.mark_enqueued(sent)
        return sent

    def close(self) -> None:
        self.celery.close()
