"""`/v1/batches`: all-or-nothing submission (JSON array, object, JSONL), bulk enqueue, counts, manifest, cancel."""

from __future__ import annotations

import json
from typing import Any

import httpx

from storage.objects.base import result_key
from tests.support.api import data_url, generate_body, png_bytes, queued_job_ids
from tests.support.claims import claim_job


def test_thousand_items_are_accepted_and_each_enqueued_once(client: Any, auth: dict[str, str], app: Any,
                                                            redis_client: Any) -> None:
    # Given 1,000 generate requests at 1024 px (queue unipic.generate.l, which no other API test uses)
    items = [generate_body(width=1024, height=1024, custom_id=f"item-{i}") for i in range(1000)]
    before = redis_client.llen("unipic.generate.l")
    # When they are submitted as one batch
    r = client.post("/v1/batches", json=items, headers=auth)
    # Then the batch exists with 1,000 queued jobs, and each job has exactly one message
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["total"] == 1000 and batch["counts"]["queued"] == 1000 and batch["status"] == "in_progress"
    jobs = app.state.services.batches.jobs(batch["id"])
    assert sorted(j.custom_id for j in jobs) == sorted(f"item-{i}" for i in range(1000))
    assert all(j.last_enqueued_at is not None for j in jobs)
    assert redis_client.llen("unipic.generate.l") - before == 1000
    queued = queued_job_ids(redis_client, "unipic.generate.l")
    assert sorted(queued[: redis_client.llen("unipic.generate.l") - before]) == sorted(j.id for j in jobs)
    page = client.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 200}, headers=auth).json()
    assert len(page["data"]) == 200 and page["next_cursor"]


def test_one_bad_line_is_422_naming_it_and_nothing_is_created(client: Any, auth: dict[str, str],
                                                              redis_client: Any) -> None:
    lines = [json.dumps(generate_body(custom_id=f"c{i}")) for i in range(5)]
    lines[3] = json.dumps(generate_body(width=999, height=999))
    before = redis_client.llen("unipic.generate.s")
    r = client.post("/v1/batches", content="\n".join(lines).encode(),
                    headers={**auth, "Content-Type": "application/x-ndjson"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["line"] == 4 and error["field"] == "width"
    assert error["message"].startswith("line 4:")
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    assert client.get("/v1/batches", headers=auth).json()["data"] == []
    assert redis_client.llen("unipic.generate.s") == before


def test_bad_lines_of_every_kind(client: Any, auth: dict[str, str]) -> None:
    jsonl = {**auth, "Content-Type": "application/x-ndjson"}
    good = json.dumps(generate_body())
    r = client.post("/v1/batches", content=f"{good}\n\n{{oops\n".encode(), headers=jsonl)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json" and r.json()["error"]["line"] == 3
    r = client.post("/v1/batches", json=[generate_body(custom_id="a"), generate_body(custom_id="a")], headers=auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "custom_id" and r.json()["error"]["line"] == 2
    r = client.post("/v1/batches", json=[generate_body(), generate_body(prompt="word " * 700)], headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "prompt_too_long" and r.json()["error"]["line"] == 2
    r = client.post("/v1/batches", json=[generate_body(), "not an object"], headers=auth)
    assert r.status_code == 422 and r.json()["error"]["line"] == 2
    bad_image = {"kind": "understand", "question": "q", "image": data_url(b"nope")}
    r = client.post("/v1/batches", json=[generate_body(), bad_image], headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image" and r.json()["error"]["line"] == 2
    assert client.post("/v1/batches", json=[], headers=auth).status_code == 422
    assert client.post("/v1/batches", json={"requests": "x"}, headers=auth).status_code == 422
    r = client.post("/v1/batches", json={"requests": [generate_body()], "webhook_url": "http://10.1.2.3/hook"},
                    headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_webhook_url"
    r = client.post("/v1/batches", content=b"kind,prompt", headers={**auth, "Content-Type": "text/csv"})
    assert r.status_code == 415
    assert client.get("/v1/batches", headers=auth).json()["data"] == []


def test_too_many_items(api_settings: Any, make_key: Any) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(api_settings.model_copy(update={"max_batch_items": 3}))
    _, headers = make_key()
    with TestClient(app) as client:
        r = client.post("/v1/batches", json=[generate_body()] * 4, headers=headers)
    assert r.status_code == 422 and "at most 3" in r.json()["error"]["message"]


def test_counts_manifest_and_scoping(client: Any, make_key: Any, app: Any) -> None:
    services = app.state.services
    _, auth = make_key()
    _, other = make_key()
    items = [generate_body(custom_id="ok"), generate_body(custom_id="bad"),
             {"kind": "understand", "question": "q", "image": data_url(png_bytes()), "custom_id": "text"}]
    batch = client.post("/v1/batches", json={"requests": items, "metadata": {"run": 7}}, headers=auth).json()
    assert batch["metadata"] == {"run": 7} and batch["manifest_url"] is None
    r = client.get(f"/v1/batches/{batch['id']}/manifest", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_finished"
    assert client.get(f"/v1/batches/{batch['id']}", headers=other).status_code == 404
    jobs = {j.custom_id: j for j in services.batches.jobs(batch["id"])}
    # play the worker: one image result, one failure, one answer
    for custom_id in ("ok", "bad", "text"):
        [claim] = claim_job(services.jobs, jobs[custom_id].id, "w")  # in submission order, as the policy claims
        if custom_id == "bad":
            services.jobs.fail(claim, "model_error", "boom")
        elif custom_id == "ok":
            key = result_key(claim.job_id, claim.lease_token, 0, "png")
            services.objects.put(key, png_bytes(4, 4), content_type="image/png")
            services.jobs.complete(claim, [key])
        else:
            services.jobs.complete(claim, [], "a red square")
        view = client.get(f"/v1/batches/{batch['id']}", headers=auth).json()
    assert view["status"] == "completed"
    assert view["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 1, "canceled": 0, "expired": 0}
    assert view["manifest_url"] and view["manifest_expires_at"]
    # the link is the API's manifest route, signed: no key needed; the owner's key works without the signature
    assert view["manifest_url"].split("?")[0].endswith(f"/v1/batches/{batch['id']}/manifest")
    answer = client.get(view["manifest_url"])
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    by_key = client.get(f"/v1/batches/{batch['id']}/manifest", headers=auth)
    assert [json.loads(x)["job_id"] for x in by_key.text.splitlines()] == \
        [json.loads(x)["job_id"] for x in answer.text.splitlines()]
    assert client.get(f"/v1/batches/{batch['id']}/manifest", headers=other).status_code == 404
    assert client.get(f"/v1/batches/{batch['id']}/manifest").status_code == 401
    assert client.get(view["manifest_url"].replace("sig=", "sig=0")).status_code == 401
    manifest = [json.loads(line) for line in answer.text.splitlines()]
    by_id = {m["custom_id"]: m for m in manifest}
    assert set(by_id) == {"ok", "bad", "text"}
    assert by_id["ok"]["status"] == "succeeded" and by_id["ok"]["job_id"] == jobs["ok"].id
    assert httpx.get(by_id["ok"]["result"]["images"][0]["url"]).content.startswith(b"\x89PNG")
    assert by_id["bad"]["error"] == {"code": "model_error", "message": "boom"}
    assert by_id["text"]["result"]["text"] == "a red square"
    r = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition"


def test_cancel_batch(client: Any, auth: dict[str, str], make_key: Any) -> None:
    batch = client.post("/v1/batches", json=[generate_body(), generate_body()], headers=auth).json()
    _, other = make_key()
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=other).status_code == 404
    r = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert r.status_code == 200
    assert r.json()["status"] == "canceled" and r.json()["counts"]["canceled"] == 2
    assert client.get("/v1/batches/not-a-batch", headers=auth).status_code == 404


def test_a_bad_image_leaves_no_stored_inputs(client: Any, auth: dict[str, str], app: Any) -> None:
    objects = app.state.services.objects
    before = objects.page("inputs/")
    good = {"kind": "understand", "question": "q", "image": data_url(png_bytes())}
    bad = {"kind": "understand", "question": "q", "image": data_url(b"GIF89a nope", "image/gif")}
    r = client.post("/v1/batches", json=[good, good, bad], headers=auth)
    assert r.status_code == 415 and r.json()["error"]["line"] == 3
    assert objects.page("inputs/") == before
