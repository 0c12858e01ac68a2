"""Fixtures for API tests that run on both backends: the session's Postgres app and an embedded (SQLite, local
objects, SQLite broker) app, with a helper that makes fresh keys and one that plays a worker finishing a job.

Import the fixtures into a test module: `from tests.api.backends import backend_fixture, embedded_client_fixture`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from storage.objects.base import result_key
from tests.support.api import png_bytes
from tests.support.claims import claim_job

Backend = tuple[TestClient, Callable[[], dict[str, str]]]


@pytest.fixture(name="embedded_client", scope="module")
def embedded_client_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app in embedded mode, for this module."""
    from api.app import create_app
    from storage.migrate import upgrade
    from storage.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("embedded") / "data", model="tiny",
                             model_dtype="float32", rate_limit_per_minute=100_000,
                             public_url="http://testserver")
    upgrade(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(name="backend", params=["postgres", "sqlite"])
def backend_fixture(request: pytest.FixtureRequest) -> Backend:
    """(client, new_key) for one backend; `new_key(**limits)` answers the headers of a fresh API key."""
    name = "client" if request.param == "postgres" else "embedded_client"
    client = request.getfixturevalue(name)
    keys = client.app.state.services.keys  # type: ignore[attr-defined]

    def new_key(**limits: Any) -> dict[str, str]:
        _, plaintext = keys.create("test", **limits)
        return {"Authorization": f"Bearer {plaintext}"}

    return client, new_key


def services_of(client: TestClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]


def finish(client: TestClient, job_id: str) -> str:
    """Play the worker: claim the job and complete it with one stored result image; the result's key."""
    services = services_of(client)
    claims = claim_job(services.jobs, job_id)
    key = result_key(job_id, claims[0].lease_token, 0, "png")
    services.objects.put(key, png_bytes(8, 8), content_type="image/png")
    assert services.jobs.complete(claims[0], [key], None, {"model_seconds": 0.5}, "tiny", "r1")
    return key
