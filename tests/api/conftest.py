"""Fixtures for the API tests: an app on the session's Postgres schema, Redis db and S3 server, API keys and a
Redis client (helpers to read the broker's queues are in tests/support/api.py).

The app is built once per module with `create_app` and driven with Starlette's TestClient (the real ASGI app,
in process). Tests isolate themselves by API key (every key sees only its own jobs), never by wiping tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

# small limits so the size and pixel checks are cheap to exercise
TEST_MAX_UPLOAD_BYTES = 256 * 1024
TEST_MAX_UPLOAD_PIXELS = 1024 * 1024


@pytest.fixture(scope="session")
def api_settings(migrated: Any) -> Any:
    """The session settings with small upload bounds."""
    return migrated.model_copy(update={
        "max_upload_bytes": TEST_MAX_UPLOAD_BYTES, "max_upload_pixels": TEST_MAX_UPLOAD_PIXELS,
        "rate_limit_per_minute": 100_000,
    })


@pytest.fixture(scope="module")
def app(api_settings: Any) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(api_settings)
    app.state.services.key_cache.ttl = 0  # revocation takes effect at once (its cache is tested on its own)
    yield app


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def key_store(app: Any) -> Any:
    return app.state.services.keys


@pytest.fixture
def make_key(key_store: Any) -> Callable[..., tuple[Any, dict[str, str]]]:
    """A new API key: (record, headers with its bearer token)."""

    def make(**limits: Any) -> tuple[Any, dict[str, str]]:
        record, plaintext = key_store.create("test", **limits)
        return record, {"Authorization": f"Bearer {plaintext}"}

    return make


@pytest.fixture
def auth(make_key: Callable[..., tuple[Any, dict[str, str]]]) -> dict[str, str]:
    """Headers of a fresh key."""
    return make_key()[1]


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()

