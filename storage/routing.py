"""Task names, queue routing and the enqueue contract, as plain data.

Shared by the API (which enqueues by task name with `send_task`) and the workers (which register the tasks
and subscribe to queues), so neither needs to import the other and the API never imports Celery task code.
Queues are split by kind and resolution class so a small GPU can subscribe only to what fits it.

The enqueue contract, the same for every sender (the API's `api.enqueue.Enqueuer`, a worker handing jobs
back, the sweeper, all through `JobRef`s):
1. the job row is committed as `queued` before its message can be consumed (the API holds the messages until
   the insert returned);
2. one `run_batch(job_id)` message goes to `JobRef.queue`;
3. then `JobStore.mark_enqueued` stamps `last_enqueued_at` on the ids actually sent.
Send, then stamp: a stamp only ever records a send that happened, so a failed send leaves the row looking
unsent and the sweeper re-sends it (`JobStore.stale_queued`); a lost stamp only costs a duplicate message,
which is a no-op (the claim is a compare-and-set). A stamp may still hold the job's row lock when a worker
claims: the claim (`JobStore.claim_for_message` / `claim_batch`) waits for locked rows before it gives up, so
it never turns into a no-op because of a stamp.
"""

from __future__ import annotations

from typing import NamedTuple

RUN_BATCH_TASK = "unipic.gpu.run_batch"
SWEEP_TASK = "unipic.cpu.sweep"
DISPATCH_WEBHOOKS_TASK = "unipic.cpu.dispatch_webhooks"

WEBHOOK_QUEUE = "unipic.webhooks"
MAINTENANCE_QUEUE = "unipic.maintenance"


class JobRef(NamedTuple):
    """What a `run_batch` message needs: the job id and the queue it goes to (`JobRecord.ref`, or built from a
    `NewJob` before its row exists)."""

    id: str
    queue: str


# resolution classes: the largest side that a class holds, smallest first
RESOLUTION_CLASSES: tuple[tuple[str, int], ...] = (("s", 512), ("l", 1024), ("xl", 4096))


def resolution_class(size: int) -> str:
    """The class name for an image side length (`s` up to 512 px, `l` up to 1024, `xl` beyond)."""
    for name, limit in RESOLUTION_CLASSES:
        if size <= limit:
            return name
    return RESOLUTION_CLASSES[-1][0]


def queue_for(kind: str, size: int) -> str:
    """The GPU queue a job of this kind and image size goes to, e.g. `unipic.generate.l`."""
    return f"unipic.{kind}.{resolution_class(size)}"


def gpu_queues(kinds: list[str] | tuple[str, ...], max_pixels: int) -> list[str]:
    """The queues a worker serving these kinds up to `max_pixels` per image subscribes to."""
    queues = []
    for kind in kinds:
        for name, _ in RESOLUTION_CLASSES:
            smallest_in_class = 16 if name == RESOLUTION_CLASSES[0][0] else _previous_limit(name) + 16
            if smallest_in_class * smallest_in_class <= max_pixels:
                queues.append(f"unipic.{kind}.{name}")
    return queues


def _previous_limit(name: str) -> int:
    names = [n for n, _ in RESOLUTION_CLASSES]
    return RESOLUTION_CLASSES[names.index(name) - 1][1]
