"""Task names, queue routing and the enqueue contract, as plain data.

Shared by the API (which enqueues by task name with `send_task`) and the workers (which register the tasks
and subscribe to queues), so neither needs to import the other and the API never imports Celery task code.
Queues are split by kind and resolution class so a small GPU can subscribe only to what fits it, and by model:
the deployment's default model keeps `unipic.{kind}.{class}`, a model named M (a fine-tuned checkpoint served
beside it) gets `unipic.{M}.{kind}.{class}`, so a message only ever wakes workers holding the job's model and
everything keyed by queue (fair share, positions, throughput, coverage) is per model. A queue names its model
(`model_of_queue`): the scheduling policy's claim takes only jobs of that model.

The enqueue contract, the same for every sender (the API's `api.enqueue.Enqueuer`, a worker handing jobs
back, the sweeper, all through `JobRef`s):
1. the job row is committed as `queued` before its message can be consumed (the API holds the messages until
   the insert returned);
2. one `run_batch(job_id)` message goes to `JobRef.queue`;
3. then `JobStore.mark_enqueued` stamps `last_enqueued_at` on the ids actually sent.
Send, then stamp: a stamp only ever records a send that happened, so a failed send leaves the row looking
unsent and the sweeper re-sends it (`workers.sweeper.Sweeper.reenqueue_lost`: a queue with fewer messages in the
broker than queued jobs is sent its shortfall, for its jobs longest unsent); a lost stamp only costs a duplicate message,
which is a no-op (the claim is a compare-and-set). A stamp may still hold the job's row lock when a worker
claims: the claim (`JobStore.claim_for_message`) waits for locked rows before it gives up, so
it never turns into a no-op because of a stamp.

The message itself is sent in one place, `RunBatchSender` (task name, args, queue, each queue declared once per
sender, one producer and one Redis pipeline per call), over any Celery app (`TaskSender`: storage imports no
Celery), with `MESSAGE_CONF` as the message settings of every app that sends: the API's send-only app
(`api.enqueue.make_sender`) and the workers' and sweeper's (`workers.app.make_celery`). `send_and_stamp` is
steps 2 and 3 for the workers and the sweeper; the API adds holding messages until the rows are committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, Protocol

from storage import tracing

RUN_BATCH_TASK = "unipic.gpu.run_batch"
SWEEP_TASK = "unipic.cpu.sweep"

DEFAULT_MODEL_ALIAS = "unipic"  # always names the deployment's default model
MAINTENANCE_QUEUE = "unipic.maintenance"


class JobRef(NamedTuple):
    """What a `run_batch` message needs: the job id and the queue it goes to (`JobRecord.ref`, or built from a
    `NewJob` before its row exists)."""

    id: str
    queue: str


PUBLISH_BATCH = 1000  # Redis commands per pipeline round trip

# How every app that sends serializes and routes messages (`Celery.conf` settings)
MESSAGE_CONF: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "result_backend": None,
    "task_create_missing_queues": True,
    "broker_connection_retry_on_startup": True,
    "timezone": "UTC",
}


class TaskSender(Protocol):
    """What sending needs of a Celery app."""

    def send_task(self, name: str, args: Sequence[Any] | None = None, *, producer: Any = None,
                  queue: str | None = None, **options: Any) -> object: ...

    def producer_or_acquire(self, producer: Any = None) -> AbstractContextManager[Any]: ...


class EnqueueStamps(Protocol):
    """Where sent jobs are stamped (`JobStore.mark_enqueued`)."""

    def mark_enqueued(self, job_ids: Sequence[str]) -> object: ...


class RunBatchSender:
    """Sends `run_batch(job_id)` messages by task name to each job's queue; `span` names a tracing span per
    message (none by default)."""

    def __init__(self, app: TaskSender, span: str | None = None) -> None:
        self.app = app
        self.span = span
        self._declared: set[str] = set()

    def send(self, producer: Any, job: JobRef) -> None:
        """One message through `producer`."""
        # declaring a queue is needed once per sender, not per message (it costs a third of a send)
        declare: dict[str, Any] = {"declare": []} if job.queue in self._declared else {}
        self._declared.add(job.queue)
        traced = tracing.span(job.id, self.span, queue=job.queue) if self.span else nullcontext()
        with traced:
            self.app.send_task(RUN_BATCH_TASK, args=[job.id], queue=job.queue, producer=producer,
                               argsrepr=f"['{job.id}']", kwargsrepr="{}", **declare)

    def send_all(self, jobs: Sequence[JobRef], sent: list[str] | None = None) -> list[str]:
        """One message per job, through one producer (one connection) and, for many, one Redis pipeline per
        PUBLISH_BATCH; returns the ids sent. Raises what the broker raised; `sent` then holds the ids sent."""
        sent = [] if sent is None else sent
        with self.app.producer_or_acquire() as producer, pipelined(producer, len(jobs)):
            for job in jobs:
                self.send(producer, job)
                sent.append(job.id)
        return sent


def pipelined(producer: Any, n: int) -> AbstractContextManager[Any]:
    """Kombu's producer batch (one Redis pipeline per PUBLISH_BATCH messages) for many messages, where the
    kombu version has it; a single message goes out directly."""
    batch = getattr(producer, "batch", None)
    return batch(PUBLISH_BATCH) if batch is not None and n > 1 else nullcontext()


def send_and_stamp(app: TaskSender, store: EnqueueStamps, jobs: Iterable[JobRef]) -> list[str]:
    """Steps 2 and 3 of the enqueue contract, for workers and the sweeper: send one message per job, then stamp
    `last_enqueued_at` on the ids sent. Returns them; raises what the broker raised (nothing stamped)."""
    sent = RunBatchSender(app).send_all(list(jobs))
    store.mark_enqueued(sent)
    return sent


# resolution classes: the largest side that a class holds, smallest first
RESOLUTION_CLASSES: tuple[tuple[str, int], ...] = (("s", 512), ("l", 1024), ("xl", 4096))


def resolution_class(size: int) -> str:
    """The class name for an image side length (`s` up to 512 px, `l` up to 1024, `xl` beyond)."""
    for name, limit in RESOLUTION_CLASSES:
        if size <= limit:
            return name
    return RESOLUTION_CLASSES[-1][0]


def served_model(name: str, default_model: str) -> str | None:
    """The model key a model name routes by: None for the deployment's default (no name, `unipic`, or the
    default's own name), else the name itself. Jobs store it (`jobs.model`) and queue names carry it."""
    return None if name in ("", DEFAULT_MODEL_ALIAS, default_model) else name


def queue_name(kind: str, resolution: str, model: str | None = None) -> str:
    """`unipic.{kind}.{class}` for the default model, `unipic.{model}.{kind}.{class}` for a named one."""
    return f"unipic.{kind}.{resolution}" if model is None else f"unipic.{model}.{kind}.{resolution}"


def model_of_queue(queue: str) -> str | None:
    """The model key a GPU queue holds jobs of (None: the default model); the inverse of `queue_name`. Model
    names may hold dots: kind and class are always the last two segments."""
    parts = queue.split(".")
    return ".".join(parts[1:-2]) if len(parts) > 3 else None


def queue_for(kind: str, size: int, model: str | None = None) -> str:
    """The GPU queue a job of this kind, image size and model key goes to, e.g. `unipic.generate.l`."""
    return queue_name(kind, resolution_class(size), model)


def gpu_queues(kinds: list[str] | tuple[str, ...], max_pixels: int, model: str | None = None) -> list[str]:
    """The queues a worker holding `model` (a key: None for the default) serving these kinds up to
    `max_pixels` per image subscribes to."""
    queues = []
    for kind in kinds:
        for name, _ in RESOLUTION_CLASSES:
            smallest_in_class = 16 if name == RESOLUTION_CLASSES[0][0] else _previous_limit(name) + 16
            if smallest_in_class * smallest_in_class <= max_pixels:
                queues.append(queue_name(kind, name, model))
    return queues


def _previous_limit(name: str) -> int:
    names = [n for n, _ in RESOLUTION_CLASSES]
    return RESOLUTION_CLASSES[names.index(name) - 1][1]
