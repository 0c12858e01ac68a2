"""The model-worker fixtures, one definition for every package that starts Celery model workers (tests/workers,
tests/gateway): import them into the package's conftest.

Workers are started exactly as in production (tests/support/workers.py) with the session's Postgres schema, Redis
db and S3 server in their environment and the tiny checkpoint as their model. Knows the session fixtures of
tests/conftest.py; knows nothing of jobs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
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
    from storage.fleet.registry import WorkerRegistry

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
