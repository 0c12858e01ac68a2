"""The model worker's Celery entry: `celery -A workers.gpu worker --pool solo` (or `unipic worker`).

It subscribes to the GPU queues its settings serve (kinds x resolution classes that fit `worker_max_pixels`),
loads ONE model per worker process in `worker_process_init` (sent by the solo pool in the main process and by
the prefork pool in each child, so torch never computes in a process that later forks), and registers
`unipic.gpu.run_batch(job_id)`. SIGTERM (warm shutdown) lets the current batch finish within the grace period
or hands it back to the queue. Configuration comes from `UNIPIC_*` variables (see `storage.settings`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import signals

from storage.routing import RUN_BATCH_TASK, gpu_queues
from storage.settings import load_settings
from workers.app import make_celery, queue

if TYPE_CHECKING:  # the runtime pulls in torch and the model: imported when a worker process starts
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

settings = load_settings()
app = make_celery(settings, name="unipic-gpu")
app.conf.task_queues = [queue(q) for q in gpu_queues(settings.worker_kinds, settings.worker_max_pixels)]

_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    """This process's runtime (built at worker start)."""
    if _runtime is None:
        raise RuntimeError("the model worker runtime is not started (no worker_process_init in this process)")
    return _runtime


@signals.worker_process_init.connect
def _start_runtime(sender: Any = None, **_: Any) -> None:
    global _runtime
    if _runtime is None:
        from workers.runtime import WorkerRuntime

        _runtime = WorkerRuntime.start(settings, app, hostname=str(sender) if sender else None)


@signals.worker_shutting_down.connect
def _request_shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.shutdown.request()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    global _runtime
    if _runtime is not None:
        _runtime.stop()
        _runtime = None


@app.task(name=RUN_BATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_batch(job_id: str) -> int:
    """Run the batch that job `job_id` seeds; returns how many jobs it claimed (0: already taken)."""
    return runtime().runner.run(job_id)
