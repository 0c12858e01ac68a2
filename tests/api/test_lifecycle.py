"""The data lifecycle through the API, on Postgres + S3 and on SQLite + a local directory: DELETE erases a
finished job or batch, results past their TTL show a tombstone, upload slots count against a storage quota.

Purges select rows by time, so the TTL test dates its job in the year 2000 and purges with `now` in 2000.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from storage.lifecycle.store import Lifecycle
from storage.tables import Job
from tests.api.backends import Backend, backend_fixture, embedded_client_fixture, finish, services_of  # noqa: F401
from tests.support.api import generate_body, png_bytes


def _lines(jsonl: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonl.splitlines()]


def error_code(r: object) -> str:
    return r.json()["error"]["code"]  # type: ignore[attr-defined, no-any-return]


def test_delete_erases_a_finished_job(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    services = services_of(client)
    job = client.post("/v1/jobs", json=generate_body(metadata={"user": "u1"}, custom_id="mine"),
                      headers=headers).json()
    # an unfinished job is 409; another key's is 404
    r = client.delete(f"/v1/jobs/{job['id']}", headers=headers)
    assert r.status_code == 409 and error_code(r) == "illegal_transition"
    key = finish(client, job["id"])
    assert client.delete(f"/v1/jobs/{job['id']}", headers=new_key()).status_code == 404
    # When the owner deletes it
    assert client.delete(f"/v1/jobs/{job['id']}", headers=headers).status_code == 204
    # Then its objects and personal fields are gone; the job keeps its status with a tombstone
    shown = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert shown["status"] == "succeeded" and shown["result"] == {"images": [], "text": None, "expired": True}
    assert shown["params"]["prompt"] is None and shown["metadata"] is None and shown["custom_id"] is None
    assert not services.objects.exists(key)
    assert client.delete(f"/v1/jobs/{job['id']}", headers=headers).status_code == 204  # idempotent


def test_delete_erases_a_finished_batch(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    services = services_of(client)
    batch = client.post("/v1/batches", json={"requests": [generate_body(custom_id="a"), generate_body()],
                                             "metadata": {"who": "me"}}, headers=headers).json()
    r = client.delete(f"/v1/batches/{batch['id']}", headers=headers)
    assert r.status_code == 409 and error_code(r) == "illegal_transition"
    jobs = client.get(f"/v1/jobs?batch_id={batch['id']}", headers=headers).json()["data"]
    keys = [finish(client, j["id"]) for j in sorted(jobs, key=lambda j: j["id"])]  # oldest first, as claimed
    manifest_url = client.get(f"/v1/batches/{batch['id']}", headers=headers).json()["manifest_url"]
    assert {line.get("custom_id") for line in _lines(client.get(manifest_url).text)} == {"a", None}
    assert client.delete(f"/v1/batches/{batch['id']}", headers=new_key()).status_code == 404
    assert client.delete(f"/v1/batches/{batch['id']}", headers=headers).status_code == 204
    assert not any(services.objects.exists(k) for k in keys)
    # the manifest, read from the erased jobs, names no custom_id and links no result
    erased = _lines(client.get(manifest_url).text)
    assert len(erased) == 2 and all(line["custom_id"] is None and not line["result"]["images"] for line in erased)
    assert services.batches.get(batch["id"]).metadata is None
    for j in client.get(f"/v1/jobs?batch_id={batch['id']}", headers=headers).json()["data"]:
        assert j["custom_id"] is None and j["result"]["expired"] is True


def test_results_past_their_ttl_show_a_tombstone(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    services = services_of(client)
    job = client.post("/v1/jobs", json=generate_body(), headers=headers).json()
    key = finish(client, job["id"])
    y2k = datetime(2000, 1, 1, tzinfo=UTC)
    with services.jobs.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(finished_at=y2k))
    lifecycle = Lifecycle(services.jobs.sessions, services.objects)
    assert job["id"] in lifecycle.purge_expired(services.settings.result_ttl,
                                                now=y2k + timedelta(seconds=services.settings.result_ttl + 1))
    shown = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert shown["status"] == "succeeded" and shown["result"]["expired"] is True and shown["result"]["images"] == []
    assert not services.objects.exists(key)


def test_upload_slots_count_against_the_storage_quota(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    settings = services_of(client).settings
    saved = settings.max_storage_bytes_per_key
    settings.max_storage_bytes_per_key = 2 * settings.max_upload_bytes
    try:
        slots = [client.post("/v1/uploads", headers=headers) for _ in range(2)]
        assert [s.status_code for s in slots] == [201, 201]
        over = client.post("/v1/uploads", headers=headers)
        assert over.status_code == 429 and error_code(over) == "storage_quota_exceeded"
        assert "Retry-After" in over.headers
        assert client.post("/v1/uploads", headers=new_key()).status_code == 201  # per key
    finally:
        settings.max_storage_bytes_per_key = saved
    # bytes are accepted only for a slot that was handed out
    owner = slots[0].json()["upload_id"].split(".", 1)[0]
    invented = f"{owner}.{'x' * 24}"
    r = client.put(f"/v1/uploads/{invented}", content=png_bytes(), headers=headers)
    assert r.status_code == 404
    ok = client.put(f"/v1/uploads/{slots[0].json()['upload_id']}", content=png_bytes(), headers=headers)
    assert ok.status_code == 200, ok.text
