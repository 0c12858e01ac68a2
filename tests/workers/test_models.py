"""Two models side by side, end to end (issue 24 item 4): two real worker processes, one holding the default
checkpoint and one a second tiny checkpoint of other weights (another seed: the stand-in for a fine-tune) under
a name of its own. Jobs submitted through the API that name the second model run only on its worker, the
others only on the default's; `GET /v1/models` (the official `openai` client) lists both with their checkpoint
hashes; the same request on the two models gives other pixels."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from model.testing import write_tiny_checkpoint
from tests.support.jobs import decode
from tests.support.waiting import wait_terminal

pytestmark = pytest.mark.system  # starts two model-worker processes


@pytest.fixture
def api(migrated: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The app in process (small images) and the headers of a new key."""
    from api.app import create_app

    app = create_app(migrated.model_copy(update={"allowed_sizes": [64], "rate_limit_per_minute": 100_000}))
    _, plaintext = app.state.services.keys.create("models-test")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {plaintext}"}


def test_jobs_naming_a_model_run_only_on_its_worker(start_worker: Any, registry: Any, job_store: Any,
                                                    object_store: Any, tmp_path: Path, api: Any) -> None:
    name = f"tiny-ft-{secrets.token_hex(3)}"
    tuned = write_tiny_checkpoint(tmp_path / "tuned", seed=1)
    default = start_worker("default", wait=False)
    other = start_worker("tuned", wait=False, UNIPIC_MODEL=str(tuned), UNIPIC_MODEL_NAME=name)
    for worker in (default, other):
        worker.wait_ready(registry)
    client, auth = api

    body = {"kind": "generate", "prompt": "a red fox", "size": 64, "steps": 2, "seed": 7}
    submitted = [client.post("/v1/jobs", json={**body, **({"model": name} if i % 2 else {})}, headers=auth)
                 for i in range(6)]
    assert [r.status_code for r in submitted] == [202] * 6, [r.text for r in submitted]
    done = wait_terminal(job_store, [r.json()["id"] for r in submitted], workers=[default, other])

    assert {j.status for j in done.values()} == {"succeeded"}, {j.id: j.error_message for j in done.values()}
    ran_on = {r.json()["id"]: (r.json()["model"], done[r.json()["id"]].worker_id) for r in submitted}
    assert {(model, wid.rsplit(":", 1)[1]) for model, wid in ran_on.values()} == {
        ("unipic", str(default.pid)), (name, str(other.pid))}
    images = {model: np.asarray(decode(object_store, done[job_id].result_keys[0]))
              for job_id, (model, _) in ran_on.items()}
    assert not np.array_equal(images["unipic"], images[name])  # same request, other weights

    oa = openai.OpenAI(base_url="http://testserver/v1", api_key=auth["Authorization"].split(" ", 1)[1],
                       http_client=client, max_retries=0)
    listed = {m.id: m.model_extra or {} for m in oa.models.list()}
    assert {"unipic", name} <= set(listed)
    hashes = {w.model_name: w.checkpoint_hash for w in registry.all() if w.pid in (default.pid, other.pid)}
    assert listed[name]["checkpoint_hashes"] == [hashes[name]]
    assert hashes[None] in listed["unipic"]["checkpoint_hashes"] and hashes[None] != hashes[name]
