"""Everything one model worker process holds: its model, stores, batch runner, heartbeat and metrics.

Built once per worker process (`WorkerRuntime.start`), before the process subscribes to any queue: the model
loads and a one-item warm-up runs first (`workers.startup`; a failure is a `StartupFailure` with an exit code),
then the worker registers what it serves (the model it holds by name and checkpoint hash, kinds, max pixels,
max batch, queues: its model's) in the `workers` table and keeps
a heartbeat there until it stops. `run(job_id)` serves one message: it backs off after a run of failed messages
(`workers.device.streak`) and, when the device breaks (`workers.device.health.DeviceFatal`), the batch runner has
already handed the batch back to the queue; the runtime then stops heartbeating and the caller ends the process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from storage.db import make_engine, make_session_factory
from storage.jobs.events import attach_from_settings
from storage.jobs.store import HeldModel, JobStore
from storage.objects.base import make_object_store
from storage.records import JobRecord
from storage.routing import gpu_queues, send_and_stamp
from storage.settings import Settings
from workers.device.card_fit import with_choice
from workers.device.health import GuardedEngine
from workers.device.streak import FailureStreak
from workers.faults import FaultInjector
from workers.heartbeat import Heartbeat, WorkerInfo
from workers.metrics import WorkerMetrics
from workers.runner.batching import BatchRunner
from workers.runner.continuous import runner_class
from workers.shutdown import ShutdownGate
from workers.transport.store_retry import RetryingJobStore

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
    engine: GuardedEngine
    streak: FailureStreak
    stopped: bool = False

    @classmethod
    def start(cls, settings: Settings, celery: Celery, hostname: str | None = None) -> WorkerRuntime:
        """Load, warm up, register. Raises `workers.startup.StartupFailure` when the worker cannot serve."""
        from workers.startup import freeze_startup_heap, held_model, load_ready_engine  # torch, after a fork

        worker_id = worker_id_for(settings, hostname)
        log.info("worker %s loading model %s on %s", worker_id, settings.model, settings.worker_device)
        faults = FaultInjector.from_env()
        engine = load_ready_engine(settings, faults)
        held = held_model(settings, engine)
        sessions = make_session_factory(make_engine(settings))
        attach_from_settings(sessions, settings)  # job events go out after commit (storage.jobs.events)
        # complete/fail/release ride out a database restart; a message of another model's queue claims nothing
        store = RetryingJobStore(sessions, HeldModel(held.key))
        metrics = WorkerMetrics()
        if settings.worker_metrics_port:
            metrics.serve(settings.worker_metrics_port)
        shutdown = ShutdownGate(settings.worker_shutdown_grace_seconds)

        def enqueue(jobs: Sequence[JobRecord]) -> None:
            send_and_stamp(celery, store, [j.ref for j in jobs])  # the enqueue contract of storage.routing

        runner = runner_class(settings)(
            store=store, objects=make_object_store(settings), engine=engine, settings=settings,
            worker_id=worker_id, metrics=metrics, shutdown=shutdown, enqueue=enqueue,
            faults=faults, device=settings.worker_device, pipeline=settings.worker_pipeline,
        )
        info = WorkerInfo(
            id=worker_id, hostname=hostname or socket.gethostname(), pid=os.getpid(),
            device=settings.worker_device, model_id=getattr(engine, "model_id", settings.model),
            kinds=list(settings.worker_kinds), max_pixels=settings.worker_max_pixels,
            max_batch=settings.worker_max_batch,
            queues=gpu_queues(settings.worker_kinds, settings.worker_max_pixels, held.key),
            model_name=held.key, checkpoint_hash=held.checkpoint_hash,
        )
        streak = FailureStreak()
        heartbeat = Heartbeat(sessions, info, settings.heartbeat_seconds, counts=lambda: (
            runner.batches_served, runner.jobs_served), health=lambda: with_choice(streak.snapshot()))
        heartbeat.start()
        freeze_startup_heap()
        log.info("worker %s ready: %s", worker_id, info)
        return cls(settings, worker_id, store, runner, heartbeat, shutdown, metrics, engine, streak)

    def run(self, job_id: str) -> int:
        """Serve one message; raises `DeviceFatal` (after the batch was released) when the device broke."""
        self.streak.pause()
        ok_before, failed_before = self.engine.counts()
        claimed = self.runner.run(job_id)
        ok_after, failed_after = self.engine.counts()
        self.streak.record(ok_after - ok_before, failed_after - failed_before, self.engine.last_error)
        return claimed

    def abandon(self, reason: str) -> None:
        """The device is broken: stop heartbeating (the record says stopped) so no one counts on us."""
        log.critical("worker %s: %s; its jobs went back to the queue; exiting", self.worker_id, reason)
        self.stop()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.runner.drain()  # results of the last batch, if still being written in the background
        self.heartbeat.stop()
        log.info("worker %s stopped", self.worker_id)
