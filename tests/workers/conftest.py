"""Fixtures for worker tests: real model-worker processes, an in-process runner, and a clean shared schema.

The worker-process fixtures (`worker_env`, `registry`, `celery_app`, `start_worker`, `module_worker`) are the
shared ones of tests/support/worker_fixtures.py. Helpers to make, send and wait for jobs are in
tests/support/jobs.py and tests/support/waiting.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.jobs import cancel_leftover_jobs, enqueue
from tests.support.worker_fixtures import celery_app, module_worker, registry, start_worker, worker_env

__all__ = ["celery_app", "module_worker", "registry", "start_worker", "worker_env"]  # fixtures, re-exported


# ---- in-process runs (the real runner, store, S3 and tiny engine, without Celery) ------------------------------
@pytest.fixture
def make_runner(settings: Any, job_store: Any, object_store: Any, tiny_engine: Any, celery_app: Any) -> Any:
    """Build a `BatchRunner` in this process with settings overrides and an optional fault injector (a
    `ContinuousRunner` with `worker_batching="continuous"`)."""
    from workers.faults import FaultInjector
    from workers.metrics import WorkerMetrics
    from workers.runner.batching import BatchRunner
    from workers.runner.continuous import runner_class
    from workers.shutdown import ShutdownGate

    def make(faults: FaultInjector | None = None, grace_seconds: float = 30.0, **overrides: Any) -> BatchRunner:
        def enqueue_released(jobs: Any) -> None:
            enqueue(job_store, celery_app, jobs)

        runner_settings = settings.model_copy(update={"progress_interval_ms": 0, **overrides})
        return runner_class(runner_settings)(
            store=job_store, objects=object_store, engine=tiny_engine, settings=runner_settings,
            worker_id="in-process:1", metrics=WorkerMetrics(), shutdown=ShutdownGate(grace_seconds),
            enqueue=enqueue_released, faults=faults,
        )

    return make


@pytest.fixture(autouse=True)
def _no_leftover_jobs(session_factory: Any) -> None:
    """Given a shared schema with no queued work left by other tests: a claim takes the best job of its queue
    (fair share across keys), so a stranger's leftover job in the queue would join or take a test's batch."""
    cancel_leftover_jobs(session_factory)
