"""A job may name a `model` (issue 24 item 4, issue 27): the default (no name, `unipic`, or its own name) is
always accepted; another name only while a live worker holds it, and its job goes to that model's queue; an
unknown name is 404 `model_not_found` before anything is stored, in the native shape on `/v1/jobs` and
`/v1/batches`, in OpenAI's on the compatible routes (driven by the official `openai` package).

The live worker here is a real `workers` row, registered and stopped through `WorkerRegistry` as a worker
process does; the app reads live workers without its few-second cache (`coverage.ttl = 0`)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from storage.routing import queue_for
from tests.support.api import generate_body, queued_job_ids

HASH = "ab" * 32


@pytest.fixture
def tuned(app: Any) -> Iterator[str]:
    """A model named for this test, held by a live (registered, heartbeating) worker until the test ends."""
    services = app.state.services
    services.coverage.ttl = 0
    name, worker_id = f"ft-{secrets.token_hex(3)}.v1", f"test-host:{secrets.token_hex(4)}"
    services.registry.register(worker_id, "test-host", 1, "cpu", "unipic-tiny", ["generate"], 1 << 20, 1,
                               [queue_for("generate", 256, name)], model_name=name, checkpoint_hash=HASH)
    yield name
    services.registry.stop(worker_id)


def openai_client(client: Any, auth: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=auth["Authorization"].split(" ", 1)[1],
                         http_client=client, max_retries=0)


def test_a_job_names_a_served_model_or_the_default(client: Any, auth: dict[str, str], tuned: str,
                                                   redis_client: Any) -> None:
    named = client.post("/v1/jobs", json=generate_body(model=tuned), headers=auth)
    assert named.status_code == 202, named.text
    assert named.json()["model"] == tuned
    assert named.json()["id"] in queued_job_ids(redis_client, f"unipic.{tuned}.generate.s")
    for alias in (None, "unipic", "unipic-tiny"):  # the default, whatever a worker holds, by each of its names
        body = generate_body() if alias is None else generate_body(model=alias)
        default = client.post("/v1/jobs", json=body, headers=auth)
        assert default.status_code == 202 and default.json()["model"] == "unipic", default.text
        assert default.json()["id"] in queued_job_ids(redis_client, "unipic.generate.s")


def test_an_unknown_model_is_404_before_anything_is_stored(client: Any, auth: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json=generate_body(model="dall-e-3"), headers=auth)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["field"] == "model"
    items = [generate_body(), generate_body(model="nonsense-model")]
    r = client.post("/v1/batches", json=items, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["line"] == 2, r.text
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    assert client.get("/v1/batches", headers=auth).json()["data"] == []


def test_openai_models_list_the_live_models(client: Any, auth: dict[str, str], tuned: str) -> None:
    oa = openai_client(client, auth)
    listed = {m.id: m for m in oa.models.list()}
    assert list(listed)[:2] == ["unipic-tiny", "unipic"] and tuned in listed
    got = oa.models.retrieve(tuned)
    assert got.id == tuned and got.model_extra == {"default": False, "workers": 1, "checkpoint_hashes": [HASH]}
    assert oa.models.retrieve("unipic").model_extra["default"] is True  # type: ignore[index]
    for call in (lambda: oa.models.retrieve("ft-gone"),
                 lambda: oa.images.generate(prompt="x", model="ft-gone"),
                 lambda: oa.chat.completions.create(model="ft-gone", messages=[{"role": "user", "content": "x"}])):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found" and caught.value.param == "model"  # type: ignore[attr-defined]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_a_model_whose_workers_stopped_is_gone(client: Any, auth: dict[str, str], app: Any, tuned: str) -> None:
    for worker in app.state.services.registry.live(60):
        if worker.model_name == tuned:
            app.state.services.registry.stop(worker.id)
    r = client.post("/v1/jobs", json=generate_body(model=tuned), headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
