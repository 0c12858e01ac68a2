"""Fixtures for the worker-gateway tests: the real API app (in process) on the session's Postgres schema, Redis
db and S3 server, worker tokens, an API key, the in-process tiny engine for runner-over-gateway tests, and
the shared Celery model-worker fixtures (tests/support/worker_fixtures.py).

Tests of this package share the schema; queued jobs left by other tests are canceled around each test, and
each test makes its own jobs and checks only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gateway.served import Gateway, served_gateway
from tests.support.jobs import cancel_leftover_jobs
from tests.support.worker_fixtures import celery_app, registry, start_worker, worker_env

__all__ = ["celery_app", "registry", "start_worker", "worker_env"]  # the shared model-worker fixtures


@pytest.fixture(autouse=True)
def _no_leftover_jobs(session_factory: Any) -> Iterator[None]:
    """Given a shared schema with no queued work left by other tests (before and after each test)."""
    cancel_leftover_jobs(session_factory)
    yield
    _fail_running(session_factory)
    cancel_leftover_jobs(session_factory)


def _fail_running(session_factory: Any) -> None:
    """Settle the jobs a test left running (so a later lease sweep cannot hand them to the next test)."""
    from sqlalchemy import select

    from storage.jobs.store import JobStore
    from storage.records import Claim
    from storage.states import JobErrorCode
    from storage.tables import Job

    store = JobStore(session_factory)
    with session_factory() as s:
        running = s.execute(select(Job.id, Job.lease_token).where(Job.status == "running")).all()
    for job_id, token in running:
        store.fail(Claim(job_id, token), JobErrorCode.MODEL_ERROR, "left running by a gateway test")


@pytest.fixture(scope="module")
def app(migrated: Any) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(migrated.model_copy(update={"rate_limit_per_minute": 100_000, "lease_seconds": 30.0}))
    app.state.services.key_cache.ttl = 0
    yield app


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def services(app: Any) -> Any:
    return app.state.services


@pytest.fixture(scope="module")
def tokens(services: Any) -> Any:
    from storage.fleet.tokens import WorkerTokenStore

    return WorkerTokenStore(services.jobs.sessions)


@pytest.fixture
def make_token(tokens: Any) -> Callable[..., tuple[Any, dict[str, str]]]:
    """A new worker token: (record, headers with its bearer token)."""

    def make(**options: Any) -> tuple[Any, dict[str, str]]:
        record, plaintext = tokens.create(options.pop("name", "test-gpu"), **options)
        return record, {"Authorization": f"Bearer {plaintext}"}

    return make


@pytest.fixture
def api_headers(services: Any) -> dict[str, str]:
    _, plaintext = services.keys.create("gateway-test")
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture(scope="module")
def gateway(migrated: Any, s3_server: str) -> Iterator[Gateway]:
    """The API over loopback HTTP behind a cutting proxy, its presigned URLs behind another (tests.gateway.served)."""
    with served_gateway(migrated, s3_server) as served:
        yield served


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
