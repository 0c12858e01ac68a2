"""A property-based fuzz over every route (schemathesis, positive and negative data): no 5xx, every 4xx has the
documented error shape, and a 4xx leaves nothing behind (no job, batch, upload slot or input object).

Each operation runs with a fresh key, so "nothing behind" is the key's own rows staying as they were; input
objects (`inputs/`) are written only by submissions, and no other test runs while this one does.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from sqlalchemy import func, select

from storage.tables import Batch, Job, Upload

MAX_EXAMPLES = 15
# server-sent events run until their job finishes; the OpenAI-style generation route answers once its job is
# done, and no worker runs here (its own tests cover it)
STREAMS = {"/v1/jobs/{job_id}/events", "/v1/batches/{batch_id}/events", "/v1/images/generations"}
WRITES_INPUTS = {("POST", "/v1/jobs"), ("POST", "/v1/batches"), ("POST", "/v1/images/edits"),
                 ("POST", "/v1/chat/completions")}


@pytest.fixture(scope="module")
def api_schema(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# every route but the event stream; test_the_fuzz_covers_every_route keeps this list complete
OPERATIONS = [
    ("DELETE", "/v1/batches/{batch_id}"), ("DELETE", "/v1/jobs/{job_id}"), ("GET", "/healthz"), ("GET", "/metrics"),
    ("GET", "/readyz"), ("GET", "/v1/batches"), ("GET", "/v1/batches/{batch_id}"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"), ("GET", "/v1/jobs/{job_id}/deliveries"), ("GET", "/v1/objects/{key}"),
    ("GET", "/v1/webhook-endpoints"), ("GET", "/v1/webhook-secret"), ("GET", "/v1/workers"),
    ("GET", "/v1/models"), ("GET", "/v1/models/{model}"), ("GET", "/v1/batches/{batch_id}/manifest"),
    ("POST", "/v1/batches"), ("POST", "/v1/batches/{batch_id}/cancel"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/images/edits"), ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/{job_id}/cancel"), ("POST", "/v1/uploads"), ("POST", "/v1/webhook-endpoints/{endpoint_id}/enable"),
    ("POST", "/v1/webhook-events/{event_id}/replay"), ("POST", "/v1/webhook-secret/rotate"), ("PUT", "/v1/objects/{key}"),
    ("PUT", "/v1/uploads/{upload_id}"), ("PUT", "/v1/webhook-endpoints/default"),
    # the worker gateway: an API key is not a worker token, so every call must be a clean 401
    *[("POST", f"/v1/worker/{op}") for op in ("claim", "renew", "cancel-requests", "cancels", "progress",
                                              "progress-many", "complete", "fail", "release", "heartbeat")],
]
WITHOUT_INPUTS = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}  # nothing to negate
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if (m, p) not in WITHOUT_INPUTS
]


def test_the_fuzz_covers_every_route(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() if path not in STREAMS for method in ops}
    assert documented == set(OPERATIONS)


def footprint(services: Any, owner_id: str, with_inputs: bool) -> tuple[int, ...]:
    with services.jobs.sessions() as s:
        counts = tuple(int(s.scalar(select(func.count()).select_from(table).where(table.owner_id == owner_id))
                           or 0) for table in (Job, Batch, Upload))
    list_keys = getattr(services.objects, "page", None) or services.objects.list
    inputs = len(list_keys("inputs/")) if with_inputs else 0
    return (*counts, inputs)


def assert_error_shape(response: Any) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str), body
    assert error.get("field") is None or isinstance(error["field"], str), body


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_every_route_fails_cleanly(app: Any, api_schema: Any, method: str, path: str,
                                   mode: GenerationMode) -> None:
    services = app.state.services
    record, plaintext = services.keys.create("fuzz")
    headers = {"Authorization": f"Bearer {plaintext}"}
    with_inputs = (method, path) in WRITES_INPUTS
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        before = footprint(services, record.id, with_inputs)
        response = case.call(headers={**(case.headers or {}), **headers})
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if 400 <= response.status_code < 500:
            assert_error_shape(response)
            assert footprint(services, record.id, with_inputs) == before, response.text[:300]

    run()
