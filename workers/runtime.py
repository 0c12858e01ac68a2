"""Everything one model worker process holds: its model, stores, batch runner, heartbeat and metrics.

Built once per worker process (`WorkerRuntime.start`, called from Celery's `worker_process_init`, which the
solo pool sends in the main process and the prefork pool in each child), so the model is loaded after any fork
and never before. It advertises what it serves (kinds, max pixels, max batch, queues) in the `workers` table
and keeps a heartbeat there until it stops.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from storage.db import make_engine, make_session_factory
from storage.jobs import JobStore
from storage.objects import make_object_store
from storage.records import JobRecord
from storage.routing import gpu_queues
from storage.settings import Settings
from workers.app import enqueue_jobs
from workers.batching import BatchRunner
from workers.faults import FaultInjector
from workers.heartbeat import Heartbeat, WorkerInfo
from workers.metrics import WorkerMetrics
from workers.shutdown import ShutdownGate

log = logging.getLogger(__name__)


def worker_id_for(settings: Settings, hostname: str | None) -> str:
    """A stable, unique id for this process: `<name or celery hostname>:<pid>`."""
    base = settings.worker_name or hostname or socket.gethostname()
    return f"{base}:{os.getpid()}"


@dataclass
class WorkerRuntime:
    settings: Settings
    worker_id: str
    store: JobStore
    runner: BatchRunner
    heartbeat: Heartbeat
    shutdown: ShutdownGate
    metrics: WorkerMetrics

    @classmethod
    def start(cls, settings: Settings, celery: Celery, hostname: str | None = None) -> WorkerRuntime:
        from model.inference import load_engine  # torch arrives here, after any fork

        worker_id = worker_id_for(settings, hostname)
        log.info("worker %s loading model %s on %s", worker_id, settings.model, settings.worker_device)
        engine = load_engine(settings.model, device=settings.worker_device, dtype=_dtype(settings))
        sessions = make_session_factory(make_engine(settings))
        store = JobStore(sessions)
        metrics = WorkerMetrics()
        if settings.worker_metrics_port:
            metrics.serve(settings.worker_metrics_port)
        shutdown = ShutdownGate(settings.worker_shutdown_grace_seconds)

        def enqueue(jobs: Sequence[JobRecord]) -> None:
            store.mark_enqueued([j.id for j in jobs])  # before sending, so no claim meets the stamp's row lock
            enqueue_jobs(celery, jobs)

        runner = BatchRunner(
            store=store, objects=make_object_store(settings), engine=engine, settings=settings,
            worker_id=worker_id, metrics=metrics, shutdown=shutdown, enqueue=enqueue,
            faults=FaultInjector.from_env(), device=settings.worker_device,
        )
        info = WorkerInfo(
            id=worker_id, hostname=hostname or socket.gethostname(), pid=os.getpid(),
            device=settings.worker_device, model_id=getattr(engine, "model_id", settings.model),
            kinds=list(settings.worker_kinds), max_pixels=settings.worker_max_pixels,
            max_batch=settings.worker_max_batch,
            queues=gpu_queues(settings.worker_kinds, settings.worker_max_pixels),
        )
        heartbeat = Heartbeat(sessions, info, settings.heartbeat_seconds, counts=lambda: (
            runner.batches_served, runner.jobs_served))
        heartbeat.start()
        log.info("worker %s ready: %s", worker_id, info)
        return cls(settings, worker_id, store, runner, heartbeat, shutdown, metrics)

    def stop(self) -> None:
        self.heartbeat.stop()
        log.info("worker %s stopped", self.worker_id)


def _dtype(settings: Settings) -> str:
    # half precision is for accelerators; a CPU worker computes in float32
    return settings.model_dtype if settings.worker_device.startswith("cuda") else "float32"

