"""Gateway workers and models: a remote worker claims only jobs of the model it says it holds (its queues are
that model's), and its heartbeat registers the model's name and checkpoint hash."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from storage.routing import queue_for
from tests.support.jobs import new_job


def test_a_remote_worker_claims_only_its_models_jobs(client: TestClient, services: Any, owner_id: str,
                                                       make_token: Callable[..., Any]) -> None:
    name = f"ft-{secrets.token_hex(3)}"
    _, headers = make_token(kinds=["generate"])
    job = services.jobs.create(replace(new_job(services.objects, owner_id, "generate", 256, 7),
                                       queue=queue_for("generate", 256, name), model=name))

    def claim(**body: Any) -> list[str]:
        r = client.post("/v1/worker/claim", headers=headers, json={"worker": "gpu:1", "wait_seconds": 0, **body})
        assert r.status_code == 200, r.text
        return [j["job_id"] for j in r.json()["jobs"]]

    assert claim() == [] and claim(model="ft-other") == []  # the default's queues, another model's
    assert services.jobs.get(job.id).status == "queued"
    assert claim(model=name) == [job.id]
    services.jobs.release([services.jobs.get(job.id).claim])

    beat = {"worker": "gpu:1", "start": True, "kinds": ["generate"], "model_name": name, "checkpoint_hash": "cd" * 32}
    assert client.post("/v1/worker/heartbeat", headers=headers, json=beat).status_code == 200
    [worker] = [w for w in services.registry.live(60) if w.model_name == name]
    assert worker.checkpoint_hash == "cd" * 32 and worker.queues and all(f".{name}." in q for q in worker.queues)
    assert client.post("/v1/worker/heartbeat", headers=headers, json={**beat, "model_name": "bad name"}).status_code == 422
    assert client.post("/v1/worker/heartbeat", headers=headers, json={**beat, "stopping": True}).status_code == 200
