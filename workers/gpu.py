"""The model worker's Celery entry: `celery -A workers.gpu worker --pool solo` (or `unipic worker`).

It subscribes to the GPU queues its settings serve (kinds x resolution classes that fit `worker_max_pixels`, of
the model it holds: `storage.routing`)
and registers `unipic.gpu.run_batch(job_id)`. Load before consume: `unipic worker` builds the runtime (model
loaded, one-item warm-up run) before starting Celery; under `celery -A workers.gpu worker` it is built in
`worker_process_init`, which the solo pool sends in the main process before the consumer starts and the prefork
pool in each child (so torch never computes in a process that later forks). A worker that cannot serve prints
one line and exits with its `workers.startup.ExitCode` before taking any message; a prefork child that cannot
serve takes its parent down with it. When the device breaks mid-batch, the batch goes back to the queue and the
process exits with `DEVICE_LOST`. SIGTERM (warm shutdown) lets the current batch finish within the grace period
or hands it back to the queue.

Nothing is built at import: `configure(settings)` builds this process's settings and Celery app once, at start.
`unipic worker` passes the settings it made from its options; `celery -A workers.gpu` asks for the module's `app`,
which builds them from the `UNIPIC_*` environment (see `storage.settings`) on that first use.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import WorkerShutdown

from storage.routing import RUN_BATCH_TASK, gpu_queues, served_model
from storage.settings import Settings, load_settings
from workers.app import make_celery, queue
from workers.device.card_fit import fit_to_card
from workers.device.health import DeviceFatal

if TYPE_CHECKING:  # the runtime pulls in torch and the model: imported when a worker process starts
    from celery import Celery

    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_MAIN_PID = os.getpid()  # the Celery main process (this module is imported before any pool fork)
_settings: Settings | None = None
_app: Celery | None = None
_runtime: WorkerRuntime | None = None


def configure(settings: Settings | None = None) -> Celery:
    """This process's Celery app, built on the first call from `settings` (the environment's when None); later
    calls return it. A cuda worker without explicit limits sizes itself to its card (NVML; torch stays unloaded
    here, so a prefork pool never forks a process that computed with it)."""
    global _settings, _app
    if _app is None:
        _settings = fit_to_card(settings if settings is not None else load_settings())
        _app = make_gpu_app(_settings)
    return _app


def worker_settings() -> Settings:
    """The settings this process serves with (after `configure`, which it runs if nothing did)."""
    configure()
    assert _settings is not None
    return _settings


def make_gpu_app(settings: Settings) -> Celery:
    """A Celery app subscribed to the GPU queues these settings serve (their model's: the default's, or
    `UNIPIC_MODEL_NAME`'s), with `run_batch` registered."""
    app = make_celery(settings, name="unipic-gpu")
    model = served_model(settings.model_name, settings.default_model)
    app.conf.task_queues = [queue(q) for q in gpu_queues(settings.worker_kinds, settings.worker_max_pixels, model)]
    app.task(name=RUN_BATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_batch)
    return app


def __getattr__(name: str) -> Celery | Settings:
    """`app` (what `celery -A workers.gpu` looks up) and `settings`, built on first use, never at import."""
    if name == "app":
        return configure()
    if name == "settings":
        return worker_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

        app = configure()
        _runtime = WorkerRuntime.start(worker_settings(), app, hostname=hostname)
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
