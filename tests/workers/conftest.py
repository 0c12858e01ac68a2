"""Fixtures for worker tests: real model-worker processes, an in-process runner, and a clean shared schema.

Workers are started exactly as in production (see tests/support/workers.py) with the session's Postgres schema,
Redis db and S3 server in their environment and the tiny checkpoint as their model. Helpers to make, send and
wait for jobs are in tests/support/jobs.py and tests/support/waiting.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.jobs import cancel_leftover_jobs, enqueue
from tests.support.workers import WorkerProcess, WorkerStarter, log_dir


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


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], registry: Any, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerStarter]:
    """Start worker processes for one test (stopped at its end); each waits until ready."""
    starter = WorkerStarter(worker_env, registry, log_dir(tmp_path_factory), f"{request.node.name[:30]}-")
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def module_worker(
    worker_env: dict[str, str], registry: Any, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    """One plain worker shared by the tests of a module."""
    starter = WorkerStarter(worker_env, registry, log_dir(tmp_path_factory), f"{request.module.__name__}-")
    yield starter("shared")
    starter.stop_all()


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


@pytest.fixture(autouse=True)
def _no_leftover_jobs(session_factory: Any) -> None:
    """Given a shared schema with no queued work left by other tests: a claim takes the best job of its queue
    (fair share across keys), so a stranger's leftover job in the queue would join or take a test's batch."""
    cancel_leftover_jobs(session_factory)
