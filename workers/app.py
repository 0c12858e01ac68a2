"""The Celery application factory shared by every worker kind and by the sweeper.

`make_celery(settings)` builds an app with the reliability settings the design asks for: late acks, messages
rejected (redelivered) when a worker dies, a prefetch of one so a GPU never hoards work, a visibility timeout
longer than the longest batch, and no result backend (Postgres is the truth; Celery results are ignored).
Queue names and task names come from `storage.routing` as plain data.

It deliberately imports neither torch nor the model: the API-side enqueue, the sweeper and the webhook worker
build the same app without paying for a model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from kombu import Exchange, Queue

from storage.jobs import JobStore
from storage.routing import (
    DISPATCH_WEBHOOKS_TASK,
    MAINTENANCE_QUEUE,
    RUN_BATCH_TASK,
    SWEEP_TASK,
    WEBHOOK_QUEUE,
    JobRef,
)
from storage.settings import Settings

log = logging.getLogger(__name__)

# A message outstanding longer than this is handed to another consumer by Redis; it must outlast any batch.
MIN_VISIBILITY_TIMEOUT_SECONDS = 3600.0


def visibility_timeout(settings: Settings) -> float:
    """Seconds an unacked message stays invisible: well beyond the time limit of a large batch."""
    longest_batch = settings.time_limit_floor_seconds + (
        settings.time_limit_seconds_per_megapixel_step
        * settings.worker_batch_pixel_budget / 1e6
        * settings.max_steps
    )
    return max(MIN_VISIBILITY_TIMEOUT_SECONDS, 2 * longest_batch)


def queue(name: str) -> Queue:
    """A queue bound to a direct exchange of its own name, as `send_task(queue=name)` publishes to it."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _transport_options(settings: Settings) -> dict[str, float]:
    # Redis (and SQS) redeliver unacked messages after a visibility timeout; the embedded SQLAlchemy transport
    # has none and hands its options to `create_engine`, which rejects unknown ones
    if settings.broker_url.startswith(("redis://", "rediss://", "sqs://")):
        return {"visibility_timeout": visibility_timeout(settings)}
    return {}


def make_celery(settings: Settings, name: str = "unipic") -> Celery:
    """A Celery app configured from `settings` (no tasks registered; entry modules add theirs)."""
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        task_create_missing_queues=True,
        task_default_queue=MAINTENANCE_QUEUE,
        task_default_exchange=MAINTENANCE_QUEUE,
        task_default_routing_key=MAINTENANCE_QUEUE,
        task_routes={
            SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
            DISPATCH_WEBHOOKS_TASK: {"queue": WEBHOOK_QUEUE},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


def enqueue_jobs(celery: Celery, jobs: Iterable[JobRef]) -> list[str]:
    """Send one `run_batch` message per job to the job's own queue; returns the ids sent."""
    sent = []
    with celery.producer_or_acquire() as producer:  # one connection for the whole list
        for job in jobs:
            celery.send_task(RUN_BATCH_TASK, args=[job.id], queue=job.queue, producer=producer)
            log.debug("enqueued job %s on %s", job.id, job.queue)
            sent.append(job.id)
    return sent


def send_and_stamp(celery: Celery, store: JobStore, jobs: Iterable[JobRef]) -> list[str]:
    """The enqueue contract of `storage.routing`, for workers and the sweeper: send one message per job, then
    stamp `last_enqueued_at` on the ids sent. Returns them; raises what the broker raised (nothing stamped)."""
    sent = enqueue_jobs(celery, jobs)
    store.mark_enqueued(sent)
    return sent
