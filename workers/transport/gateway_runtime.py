"""A model worker on the remote transport: `unipic worker --gateway https://... --token wk_...`.

Same load-before-consume start as a direct worker (`workers.startup`: model loaded and warmed up first, a
`StartupFailure` with an exit code otherwise), the same `workers.runner.batching.BatchRunner` (batching, out-of-memory
splitting, per-item seeds, cancellation between steps, graceful SIGTERM), over `workers.transport.gateway_client` instead
of the database, broker and bucket. The loop long-polls the gateway's claim, runs the batch, and heartbeats from
a daemon thread (the worker appears in `GET /v1/workers` with transport "remote"). SIGTERM: the current batch
finishes within the grace period or goes back to the queue; a batch claimed while stopping is released at once.
A revoked token (401) stops the worker; its leases then expire and its jobs go to other workers.

`refuse_credentials(env)` is the guard that a gateway worker is never shipped with direct credentials: any
database, broker or storage setting in its environment is an error. Knows nothing of Celery or SQL.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.records import JobRecord
from storage.settings import Settings
from workers.device.health import DeviceFatal, GuardedEngine
from workers.faults import FaultInjector
from workers.metrics import WorkerMetrics
from workers.runner.batching import BatchRunner
from workers.runner.continuous import runner_class
from workers.shutdown import ShutdownGate
from workers.transport.gateway_client import (
    GatewayError,
    GatewayHttp,
    GatewayJobs,
    GatewayObjects,
    TokenRevoked,
)

log = logging.getLogger(__name__)

# what a direct worker connects with; a gateway worker must have none of it
CREDENTIAL_VARIABLES = (
    "UNIPIC_DATABASE_URL", "UNIPIC_DB_SCHEMA", "UNIPIC_BROKER_URL", "UNIPIC_REDIS_URL", "UNIPIC_STORAGE_URL",
    "UNIPIC_S3_ENDPOINT_URL", "UNIPIC_S3_ACCESS_KEY_ID", "UNIPIC_S3_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)
CLAIM_WAIT_SECONDS = 5.0  # short enough that SIGTERM is noticed promptly between long-polls


class CredentialsGiven(RuntimeError):
    """A gateway worker was given database, broker or storage settings."""


def refuse_credentials(env: Mapping[str, str]) -> None:
    """Raise `CredentialsGiven` naming every direct-transport setting present in `env`."""
    found = [name for name in CREDENTIAL_VARIABLES if env.get(name)]
    if found:
        raise CredentialsGiven(
            f"{', '.join(found)} set together with --gateway: a gateway worker needs only the URL and a worker "
            "token; unset them (never ship database, broker or storage credentials to a remote worker)")


@dataclass
class GatewayWorker:
    settings: Settings
    jobs: GatewayJobs
    objects: GatewayObjects
    runner: BatchRunner
    engine: GuardedEngine
    shutdown: ShutdownGate
    name: str
    stopped: threading.Event
    checkpoint_hash: str | None = None

    @classmethod
    def start(cls, settings: Settings, gateway_url: str, token: str) -> GatewayWorker:
        """Load, warm up, register with the gateway. Raises `workers.startup.StartupFailure` (cannot serve),
        `TokenRevoked` (bad token) or `GatewayError` (gateway unreachable)."""
        from workers.startup import freeze_startup_heap, held_model, load_ready_engine  # torch arrives here

        name = f"{settings.worker_name or socket.gethostname()}:{os.getpid()}"
        http = GatewayHttp(gateway_url, token)
        objects = GatewayObjects()
        jobs = GatewayJobs(http, objects, name)
        first = jobs.heartbeat(start=False, hostname=socket.gethostname(), pid=os.getpid())  # token check first
        # the deployment's lease and heartbeat periods, so renewals and beats keep pace with its sweeper
        settings = settings.model_copy(update={"lease_seconds": float(first["lease_seconds"]),
                                               "heartbeat_seconds": float(first["heartbeat_seconds"])})
        faults = FaultInjector.from_env()
        engine = load_ready_engine(settings, faults)
        held = held_model(settings, engine)
        jobs.model = held.key  # its claims take only jobs of the model it holds
        shutdown = ShutdownGate(settings.worker_shutdown_grace_seconds)
        runner = runner_class(settings)(
            store=jobs, objects=objects, engine=engine, settings=settings, worker_id=first["worker_id"],
            metrics=WorkerMetrics(), shutdown=shutdown, enqueue=_server_enqueues, faults=faults,
            device=settings.worker_device, pipeline=settings.worker_pipeline,
        )
        worker = cls(settings, jobs, objects, runner, engine, shutdown, name, threading.Event(),
                     held.checkpoint_hash)
        worker._beat(start=True)
        freeze_startup_heap()
        log.info("gateway worker %s ready (gateway %s)", first["worker_id"], gateway_url)
        return worker

    def serve(self) -> None:
        """Claim and run batches until shutdown is requested or the token is revoked."""
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        s = self.settings
        try:
            while not self.shutdown.requested:
                asked: float | None = time.monotonic()
                try:
                    claims = self.runner.left_claims()
                    if claims:
                        asked = self.runner.left_asked_at  # a look of the last loop took them
                    else:
                        claims = self.jobs.claim(
                            s.worker_max_batch, s.worker_batch_pixel_budget, s.worker_max_pixels, s.worker_kinds,
                            CLAIM_WAIT_SECONDS)
                except TokenRevoked:
                    raise
                except GatewayError as exc:
                    log.warning("claim failed: %s", exc)
                    self.shutdown_wait(2.0)
                    continue
                if not claims:
                    continue
                if self.shutdown.requested:  # claimed while stopping: hand it straight back
                    self.jobs.release(claims)
                    break
                try:
                    self.runner.run_claims(claims, asked)
                except TokenRevoked:
                    raise
                except GatewayError as exc:  # the gateway stayed unreachable: the leases expire, jobs go back
                    log.error("batch %s abandoned: %s", [c.job_id for c in claims], exc)
                self.jobs.forget_finished()
        finally:
            self.stop()

    def shutdown_wait(self, seconds: float) -> None:
        self.stopped.wait(seconds)

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        try:
            self.runner.drain()
        finally:
            self.stopped.set()
            if not self.jobs.http.revoked.is_set():
                try:
                    self._beat(stopping=True)
                except Exception:  # noqa: BLE001 - the gateway notices the missing heartbeat
                    log.warning("could not record the stop with the gateway")
        log.info("gateway worker %s stopped", self.name)

    def _heartbeat_loop(self) -> None:
        interval = float(self.settings.heartbeat_seconds)
        while not self.stopped.wait(interval):
            try:
                self._beat()
            except TokenRevoked:
                log.error("worker token revoked: stopping")
                self.shutdown.request()
                return
            except Exception as exc:  # noqa: BLE001 - the next beat retries
                log.warning("heartbeat failed: %s", exc)

    _reported = (0, 0)

    def _beat(self, start: bool = False, stopping: bool = False) -> None:
        s = self.settings
        batches, jobs = self.runner.batches_served, self.runner.jobs_served
        self.jobs.heartbeat(
            start=start, stopping=stopping, hostname=socket.gethostname(), pid=os.getpid(),
            device=s.worker_device, model_id=getattr(self.engine, "model_id", s.model), kinds=list(s.worker_kinds),
            max_pixels=s.worker_max_pixels, max_batch=s.worker_max_batch, model_name=self.jobs.model,
            checkpoint_hash=self.checkpoint_hash, batches=batches - self._reported[0], jobs=jobs - self._reported[1],
        )
        self._reported = (batches, jobs)


def _server_enqueues(jobs: Sequence[JobRecord]) -> None:
    """Released jobs get their fresh message from the gateway's `release` (the server holds the broker)."""


def run(settings: Settings, gateway_url: str, token: str, install_signals: Any = None) -> int:
    """Start and serve; the exit code (`workers.startup.ExitCode`)."""
    import signal

    from workers.startup import ExitCode, StartupFailure

    try:
        worker = GatewayWorker.start(settings, gateway_url, token)
    except StartupFailure as failure:
        _say(failure.line())
        return int(failure.code)
    except TokenRevoked as exc:
        _say(f"error: {exc}; create a token with `unipic worker-tokens create`")
        return int(ExitCode.BAD_SETTINGS)
    except GatewayError as exc:
        _say(f"error: cannot reach the gateway: {exc}")
        return int(ExitCode.FAILURE)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.shutdown.request())
    try:
        worker.serve()
    except TokenRevoked as exc:
        log.error("%s; stopping (its jobs return to the queue when their leases expire)", exc)
        return int(ExitCode.BAD_SETTINGS)
    except DeviceFatal as fatal:
        log.critical("%s; its jobs went back to the queue; exiting", fatal.reason)
        return int(ExitCode.DEVICE_LOST)
    return int(ExitCode.OK)


def _say(line: str) -> None:
    """The one line a supervisor shows (as `workers.gpu` does for a worker that cannot start)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
