"""The Celery application factory shared by every worker kind and by the sweeper.

`make_celery(settings)` builds an app with the reliability settings the design asks for: late acks, messages
rejected (redelivered) when a worker dies, a prefetch of one so a GPU never hoards work, a visibility timeout
longer than the longest batch, and no result backend (Postgres is the truth; Celery results are ignored).
Queue names, task names and the message settings every sender shares (`MESSAGE_CONF`) come from
`storage.routing`, which also sends the jobs (`send_and_stamp`): the same sender as the API's.

It deliberately imports neither torch nor the model: the sweeper and the webhook worker build the same app
without paying for a model.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from storage.routing import MAINTENANCE_QUEUE, MESSAGE_CONF, SWEEP_TASK
from storage.settings import Settings

# A message outstanding longer than this is handed to another consumer by Redis; it must outlast any batch.
MIN_VISIBILITY_TIMEOUT_SECONDS = 3600.0


WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")
"""Every Celery worker of ours runs without gossip, mingle and worker heartbeats: nothing here reads them (task
events are off; liveness is the `workers` table and a remote-control ping), and they are what Celery's consumer
trips on after a broker reconnection, when it can stop consuming (celery/celery#8030, #9054)."""


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
        **MESSAGE_CONF,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=_transport_options(settings),
        task_default_queue=MAINTENANCE_QUEUE,
        task_default_exchange=MAINTENANCE_QUEUE,
        task_default_routing_key=MAINTENANCE_QUEUE,
        task_routes={SWEEP_TASK: {"queue": MAINTENANCE_QUEUE}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app

