"""The model worker's Celery entry: `celery -A workers.gpu worker --pool solo` (or `unipic worker`).

It subscribes to the GPU queues its settings serve (kinds x resolution classes that fit `worker_max_pixels`)
and registers `unipic.gpu.run_batch(job_id)`. Load before consume: `unipic worker` builds the runtime (model
loaded, one-item warm-up run) before starting Celery; under `celery -A workers.gpu worker` it is built in
`worker_process_init`, which the solo pool sends in the main process before the consumer starts and the prefork
pool in each child (so torch never computes in a process that later forks). A worker that cannot serve prints
one line and exits with its `workers.startup.ExitCode` before taking any message; a prefork child that cannot
serve takes its parent down with it. When the device breaks mid-batch, the batch goes back to the queue and the
process exits with `DEVICE_LOST`. SIGTERM (warm shutdown) lets the current batch finish within the grace period
or hands it back to the queue. Configuration comes from `UNIPIC_*` variables (see `storage.settings`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import WorkerShutdown

from storage.routing import RUN_BATCH_TASK, gpu_queues
from storage.settings import load_settings
from workers.app import make_celery, queue
from workers.card_fit import fit_to_card
from workers.device_health import DeviceFatal

if TYPE_CHECKING:  # the runtime pulls in torch and the model: imported when a worker process starts
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

settings = fit_to_card(load_settings())  # a cuda worker without explicit limits sizes itself to its card
app = make_celery(settings, name="unipic-gpu")
app.conf.task_queues = [queue(q) for q in gpu_queues(settings.worker_kinds, settings.worker_max_pixels)]

_MAIN_PID = os.getpid()  # the Celery main process (this module is imported before any pool fork)
_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    """This process's runtime (built at worker start)."""
    if _runtime is None:
        raise RuntimeError("the model worker runtime is not started (no worker_process_init in this process)")
    return _runtime


def start_runtime(hostname: str | None = None) -> WorkerRuntime:
    """Build this process's runtime once; raises `workers.startup.StartupFailure` when it cannot serve."""
    global _runtime
    if _runtime is None:
        from workers.runtime import WorkerRuntime

        _runtime = WorkerRuntime.start(settings, app, hostname=hostname)
    return _runtime


def exit_worker(code: int) -> None:
    """End the worker with `code`: the whole worker in the main process, parent included from a pool child."""
    if os.getpid() != _MAIN_PID:  # a prefork child: a cold shutdown of the parent (non-zero), then go
        os.kill(_MAIN_PID, signal.SIGQUIT)
        os._exit(code)
    raise WorkerShutdown(code)  # SystemExit: passes Celery's signal and task handlers; the worker exits


@signals.worker_process_init.connect
def _start_runtime(sender: Any = None, **_: Any) -> None:
    from workers.startup import StartupFailure

    try:
        start_runtime(hostname=str(sender) if sender else None)
    except StartupFailure as failure:
        sys.stderr.write(failure.line() + "\n")
        sys.stderr.flush()
        exit_worker(int(failure.code))


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
    from workers.startup import ExitCode

    the_runtime = runtime()
    try:
        return the_runtime.run(job_id)
    except DeviceFatal as fatal:
        the_runtime.abandon(fatal.reason)
        sys.stderr.write(f"error: {fatal.reason}; check the GPU (nvidia-smi, dmesg for Xid errors) before "
                         f"restarting (exit code {int(ExitCode.DEVICE_LOST)})\n")
        exit_worker(int(ExitCode.DEVICE_LOST))
        raise  # unreachable: exit_worker ends the process
