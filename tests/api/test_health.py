"""`/healthz`, `/readyz`, `/metrics`, and how the API answers when a backing service is down or full."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.api import generate_body


def test_health_ready_and_metrics(client: Any, auth: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "objects": "ok"}
    client.post("/v1/jobs", json=generate_body(), headers=auth)
    client.get("/v1/jobs/0190e3f2-0000-7000-8000-000000000000", headers=auth)
    text = client.get("/metrics").text
    assert 'unipic_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert "unipic_http_request_seconds_bucket" in text
    assert 'unipic_jobs{status="queued"}' in text and "unipic_queue_depth" in text


@pytest.fixture
def broken_client(api_settings: Any) -> Iterator[TestClient]:
    """An app whose database, Redis and S3 endpoints refuse connections."""
    from api.app import create_app

    settings = api_settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/test", "redis_url": "redis://127.0.0.1:1/0",
        "broker_url": "redis://127.0.0.1:1/0", "s3_endpoint_url": "http://127.0.0.1:1",
    })
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_backing_services_down_is_503_never_500(broken_client: TestClient) -> None:
    r = broken_client.get("/readyz")
    assert r.status_code == 503
    assert set(r.json()["checks"]) == {"database", "redis", "objects"}
    assert all(v != "ok" for v in r.json()["checks"].values())
    r = broken_client.post("/v1/jobs", json=generate_body(), headers={"Authorization": "Bearer upk_whatever"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert broken_client.get("/healthz").status_code == 200


def test_redis_down_still_accepts_jobs(api_settings: Any, make_key: Any) -> None:
    """Redis holds no truth: with it gone a job is still accepted (queued in Postgres, re-enqueued later)."""
    from api.app import create_app

    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0",
                                               "broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(settings)
    _, headers = make_key()
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/jobs", json=generate_body(), headers=headers)
        assert r.status_code == 202, r.text
        record = app.state.services.jobs.get(r.json()["id"])
        assert record.status == "queued" and record.last_enqueued_at is None  # the sweeper's cue


def test_queue_over_its_depth_is_503_overloaded(api_settings: Any, make_key: Any) -> None:
    from api.app import create_app

    app = create_app(api_settings.model_copy(update={"max_queue_depth": 1}))
    _, headers = make_key()
    with TestClient(app, raise_server_exceptions=False) as client:
        client.post("/v1/jobs", json=generate_body(), headers=headers)  # the schema already holds queued jobs
        r = client.post("/v1/jobs", json=generate_body(), headers=headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
        assert client.get("/v1/jobs", headers=headers).status_code == 200  # reads are not refused


def test_api_never_imports_torch_model_or_workers() -> None:
    import subprocess
    import sys

    code = ("import sys, api.app, api.status.routes\n"
            "bad = [m for m in ('torch', 'transformers', 'model', 'workers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
