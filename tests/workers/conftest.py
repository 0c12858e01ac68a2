"""Fixtures for worker tests: real model-worker processes, jobs created through JobStore, and waiting.

Workers are started exactly as in production (`python -m celery -A workers.gpu worker --pool solo`) with the
session's Postgres schema, Redis db and S3 server in their environment and the tiny checkpoint as their model;
a worker is ready once it has registered itself in the `workers` table (after its model is loaded).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storage.jobs import JobStore
from storage.objects import input_key
from storage.records import JobRecord, NewJob
from storage.routing import queue_for

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0  # liveness bounds, not speed assertions: a broken worker fails instead of hanging
DONE_TIMEOUT = 150.0


class WorkerProcess:
    """A model worker in its own process, with its log file."""

    def __init__(self, env: dict[str, str], name: str, log_dir: Path, extra_env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        full_env = {**env, **(extra_env or {})}
        cmd = [
            sys.executable, "-m", "celery", "-A", "workers.gpu", "worker", "--pool", "solo", "--concurrency",
            "1", "--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, registry: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if any(w.pid == self.pid and w.stopped_at is None for w in registry.all()):
                return
            time.sleep(0.2)
        pytest.fail(f"worker {self.name} not ready after {READY_TIMEOUT}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def worker_env(settings_env: dict[str, str], tiny_checkpoint: Path, migrated: Any) -> dict[str, str]:
    """The environment of a worker process: this session's services and the tiny checkpoint."""
    env = dict(settings_env)
    env.update(
        UNIPIC_MODEL=str(tiny_checkpoint), UNIPIC_MODEL_DTYPE="float32", UNIPIC_WORKER_DEVICE="cpu",
        UNIPIC_HEARTBEAT_SECONDS="2", UNIPIC_PROGRESS_INTERVAL_MS="0", PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="session")
def registry(session_factory: Any) -> Any:
    from storage.workers_registry import WorkerRegistry

    return WorkerRegistry(session_factory)


@pytest.fixture(scope="session")
def celery_app(settings: Any) -> Any:
    from workers.app import make_celery

    return make_celery(settings)


class WorkerStarter:
    """Starts worker processes and stops them all at teardown."""

    def __init__(self, env: dict[str, str], registry: Any, log_dir: Path, prefix: str) -> None:
        self.env, self.registry, self.log_dir, self.prefix = env, registry, log_dir, prefix
        self.started: list[WorkerProcess] = []

    def __call__(self, name: str, wait: bool = True, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(self.env, f"{self.prefix}{name}-{len(self.started)}", self.log_dir, extra_env)
        self.started.append(worker)
        if wait:
            worker.wait_ready(self.registry)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def _log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kept = os.environ.get("TEST_WORKER_LOGS")  # set it to keep worker logs for a look afterwards
    log_dir = Path(kept) if kept else tmp_path_factory.mktemp("worker-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], registry: Any, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerStarter]:
    """Start worker processes for one test (stopped at its end); each waits until ready."""
    starter = WorkerStarter(worker_env, registry, _log_dir(tmp_path_factory), f"{request.node.name[:30]}-")
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def module_worker(
    worker_env: dict[str, str], registry: Any, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    """One plain worker shared by the tests of a module."""
    starter = WorkerStarter(worker_env, registry, _log_dir(tmp_path_factory), f"{request.module.__name__}-")
    yield starter("shared")
    starter.stop_all()


# ---- jobs ---------------------------------------------------------------------------------------------------
def compat_key(kind: str, params: dict[str, Any]) -> str:
    """The compatibility key as docs/architecture.md defines it."""
    if kind == "understand":
        return f"understand:{params['size']}"
    return f"{kind}:{params['width']}:{params['steps']}:{params['guidance_scale']}:{params['guidance_schedule']}"


def png_bytes(size: int = 48, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_job(
    store: JobStore, objects: Any, owner_id: str, kind: str, size: int, seed: int, steps: int = 2,
    num_images: int = 1, output_format: str = "png", input_bytes: bytes | None = None, priority: int = 0,
    guidance_scale: float = 3.0, tag: str = "",
) -> JobRecord:
    """Create one queued job the way the API would (normalized params, input stored first)."""
    from storage.ids import new_id

    job_id = new_id()
    key = None
    if kind == "understand":
        params: dict[str, Any] = {"question": "what is this?", "size": size, "max_new_tokens": 4,
                                  "temperature": 0.0, "seed": seed}
    else:
        params = {"width": size, "height": size, "num_images": num_images, "steps": steps,
                  "guidance_scale": guidance_scale, "guidance_schedule": "constant", "temperature": 1.0,
                  "seed": seed, "output_format": output_format}
        params["prompt" if kind == "generate" else "instruction"] = "a red cube"
        if kind == "generate":
            params["negative_prompt"] = None
    if kind in ("edit", "understand"):
        key = input_key(job_id)
        objects.put(key, input_bytes if input_bytes is not None else png_bytes(seed=seed), "image/png")
    return store.create(NewJob(
        id=job_id, owner_id=owner_id, kind=kind, params=params, compat_key=compat_key(kind, params) + (f"|{tag}" if tag else ""),
        queue=queue_for(kind, size), priority=priority, seed=seed, input_key=key,
    ))


def enqueue(store: JobStore, celery: Any, jobs: Iterable[JobRecord]) -> None:
    from workers.app import enqueue_jobs

    # send, then stamp: the order api/enqueue.py uses, so the worker's claim can meet the stamp's row lock
    store.mark_enqueued(enqueue_jobs(celery, list(jobs)))


def wait_terminal(store: JobStore, ids: list[str], timeout: float = DONE_TIMEOUT,
                  workers: Iterable[WorkerProcess] = ()) -> dict[str, JobRecord]:
    """Poll until every job is terminal; fail with the worker logs if that does not happen."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j.id: j for j in store.get_many(ids)}
        if all(j.terminal for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            pending = {j.id: j.status for j in jobs.values() if not j.terminal}
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"jobs not terminal after {timeout}s: {pending}\n{logs}")
        time.sleep(0.2)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DONE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def decode(objects: Any, key: str) -> Image.Image:
    with Image.open(io.BytesIO(objects.get(key))) as image:
        image.load()
        return image.copy()


# ---- in-process runs (the real runner, store, S3 and tiny engine, without Celery) ------------------------------
@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Any:
    from model.inference import load_engine

    return load_engine(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def make_runner(settings: Any, job_store: Any, object_store: Any, tiny_engine: Any, celery_app: Any) -> Any:
    """Build a `BatchRunner` in this process with settings overrides and an optional fault injector."""
    from workers.batching import BatchRunner
    from workers.faults import FaultInjector
    from workers.metrics import WorkerMetrics
    from workers.shutdown import ShutdownGate

    def make(faults: FaultInjector | None = None, grace_seconds: float = 30.0, **overrides: Any) -> BatchRunner:
        def enqueue_released(jobs: Any) -> None:
            enqueue(job_store, celery_app, jobs)

        return BatchRunner(
            store=job_store, objects=object_store, engine=tiny_engine,
            settings=settings.model_copy(update={"progress_interval_ms": 0, **overrides}),
            worker_id="in-process:1", metrics=WorkerMetrics(), shutdown=ShutdownGate(grace_seconds),
            enqueue=enqueue_released, faults=faults,
        )

    return make


@pytest.fixture(scope="package", autouse=True)
def _no_leftover_jobs(session_factory: Any) -> None:
    """Given a shared schema with no queued work left by other packages' tests."""
    from tests.conftest import cancel_leftover_jobs

    cancel_leftover_jobs(session_factory)
