"""The worker gateway's routes, through the real app: the claim, the fenced calls, and what a worker cannot do."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from storage.records import Claim, JobRecord
from tests.support.api import queued_job_ids
from tests.support.jobs import make_job

TokenMaker = Callable[..., tuple[Any, dict[str, str]]]


def _png(size: int = 256) -> bytes:  # the size `_job` asks for
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _job(services: Any, owner_id: str, kind: str = "generate", size: int = 256, **kw: Any) -> JobRecord:
    return make_job(services.jobs, services.objects, owner_id, kind, size, seed=7, **kw)


def _claim(client: TestClient, headers: dict[str, str], worker: str = "gpu:1", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/worker/claim", headers=headers,
                           json={"worker": worker, "max_items": 8, "wait_seconds": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _claimed(client: TestClient, headers: dict[str, str], job_id: str, **body: Any) -> dict[str, Any]:
    claimed = {j["job_id"]: j for j in _claim(client, headers, **body)["jobs"]}
    assert job_id in claimed, f"{job_id} not claimed: {list(claimed)}"
    return claimed[job_id]


def _upload(item: dict[str, Any], data: bytes) -> list[dict[str, Any]]:
    declared = []
    for key, url in item["result_urls"].items():
        assert httpx.put(url, content=data).status_code == 200
        declared.append({"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return declared


def _complete(client: TestClient, headers: dict[str, str], item: dict[str, Any], objects: list[dict[str, Any]],
              worker: str = "gpu:1") -> httpx.Response:
    return client.post("/v1/worker/complete", headers=headers, json={
        "worker": worker, "job_id": item["job_id"], "lease_token": item["lease_token"], "objects": objects})


def test_claim_returns_the_batch_with_presigned_urls_for_exactly_its_keys(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    # Given a queued generate job (two webp images) and an edit job with an input image
    _, headers = make_token()
    generate = _job(services, owner_id, num_images=2, output_format="webp")
    edit = _job(services, owner_id, kind="edit")
    # When a worker claims
    item = _claimed(client, headers, generate.id, kinds=["generate"])
    # Then it gets the lease, params, seed and PUT URLs for exactly its result keys
    assert item["lease_token"] and item["params"]["prompt"] == "a red cube" and item["seed"] == 7
    lease = item["lease_token"]
    assert sorted(item["result_urls"]) == [f"results/{generate.id}/{lease}/0.webp",
                                           f"results/{generate.id}/{lease}/1.webp"]
    assert item["input_url"] is None
    edit_item = _claimed(client, headers, edit.id, kinds=["edit"])
    assert sorted(edit_item["result_urls"]) == [f"results/{edit.id}/{edit_item['lease_token']}/0.png"]
    assert httpx.get(edit_item["input_url"]).content == services.objects.get(edit.input_key)
    assert services.jobs.get(edit.id).status == "running"


def test_complete_checks_the_uploaded_objects_before_succeeding(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    _, headers = make_token()
    job = _job(services, owner_id)
    item = _claimed(client, headers, job.id)
    key = f"results/{job.id}/{item['lease_token']}/0.png"
    good = _png()
    # nothing uploaded yet: refused, and the job stays running under the lease
    missing = _complete(client, headers, item, [{"key": key, "size": len(good),
                                                 "sha256": hashlib.sha256(good).hexdigest()}])
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "result_missing"
    # not an image: refused
    junk = b"not an image at all"
    bad = _complete(client, headers, item, _upload(item, junk))
    assert bad.status_code == 422 and services.jobs.get(job.id).status == "running"
    # declared size or checksum that does not match: refused
    objects = _upload(item, good)
    wrong = [{**objects[0], "sha256": "0" * 64}]
    assert _complete(client, headers, item, wrong).status_code == 422
    # a key outside the job's results: refused
    other = [{**objects[0], "key": f"results/{job.id}/9.png"}]
    assert _complete(client, headers, item, other).status_code == 422
    # the real result: succeeded with its keys
    assert _complete(client, headers, item, objects).json() == {"ok": True}
    done = services.jobs.get(job.id)
    assert done.status == "succeeded" and done.result_keys == [key]
    # and a repeat of that complete (its answer lost on the way back) is answered ok again, changing nothing
    assert _complete(client, headers, item, objects).json() == {"ok": True}
    assert services.jobs.get(job.id) == done
    # while a complete under that lease declaring anything else is a stale claim
    assert _complete(client, headers, item, []).status_code == 409
    assert _complete(client, headers, {**item, "lease_token": "another-lease"}, objects).status_code == 409


def test_understand_answer_must_name_its_job(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    _, headers = make_token(kinds=["understand"])
    job = _job(services, owner_id, kind="understand", size=256)
    item = _claimed(client, headers, job.id)
    assert list(item["result_urls"]) == [f"results/{job.id}/{item['lease_token']}/answer.json"]
    forged = b'{"job_id": "someone-else", "text": "hi"}'
    assert _complete(client, headers, item, _upload(item, forged)).status_code == 422
    answer = json.dumps({"job_id": job.id, "text": "a red cube", "seed": 7}).encode()
    assert _complete(client, headers, item, _upload(item, answer)).status_code == 200
    assert services.jobs.get(job.id).result_text == "a red cube"


def test_a_worker_cannot_touch_a_job_it_did_not_claim(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    # Given a job claimed under token A
    _, a = make_token(name="a")
    _, b = make_token(name="b")
    job = _job(services, owner_id)
    item = _claimed(client, a, job.id)
    ref = {"worker": "gpu:1", "job_id": job.id, "lease_token": item["lease_token"]}
    # When token B (even with A's lease token) renews, reports, fails or completes it: not found / not held
    assert client.post("/v1/worker/renew", headers=b, json={"worker": "gpu:1", "claims": [
        {"job_id": job.id, "lease_token": item["lease_token"]}]}).json()["held"] == []
    assert client.post("/v1/worker/progress", headers=b, json={**ref, "step": 1, "total": 2}).status_code == 404
    assert client.post("/v1/worker/fail", headers=b, json={**ref, "code": "model_error"}).status_code == 404
    assert _complete(client, b, item, []).status_code == 404
    assert client.post("/v1/worker/release", headers=b, json={"worker": "gpu:1", "claims": [
        {"job_id": job.id, "lease_token": item["lease_token"]}]}).json() == {"released": 0}
    # and A with a wrong lease token is a stale claim
    stale = {**ref, "lease_token": "f" * 32, "step": 1, "total": 2}
    assert client.post("/v1/worker/progress", headers=a, json=stale).status_code == 409
    # a worker token reads no job through the API either
    assert client.get(f"/v1/jobs/{job.id}", headers=a).status_code == 401
    # Then the job is still A's, running
    assert services.jobs.get(job.id).status == "running"
    assert client.post("/v1/worker/progress", headers=a, json={**ref, "step": 1, "total": 2}).json() == {"ok": True}


def test_a_worker_cannot_read_another_jobs_input_or_write_outside_its_keys(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    from workers.transport.gateway_client import GatewayObjects, ResultRefused

    _, headers = make_token()
    mine = _job(services, owner_id, kind="edit")
    theirs = _job(services, owner_id, kind="edit")
    item = _claimed(client, headers, mine.id, kinds=["edit"], max_items=1)
    objects = GatewayObjects()
    objects.allow({item["input_key"]: item["input_url"]}, item["result_urls"])
    assert objects.get(mine.input_key) == services.objects.get(mine.input_key)
    with pytest.raises(ResultRefused):
        objects.get(theirs.input_key)
    with pytest.raises(ResultRefused):
        objects.put(f"results/{theirs.id}/0.png", _png())
    with pytest.raises(ResultRefused):
        objects.put(f"inputs/{mine.id}/image.png", _png())
    # the server hands out no URL but the job's own result keys, and accepts no other key
    assert all(key.startswith(f"results/{mine.id}/") for key in item["result_urls"])
    services.jobs.release([Claim(mine.id, item["lease_token"])])


def test_a_worker_cannot_claim_kinds_or_sizes_its_token_does_not_allow(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    from api.gateway.auth import WorkerCaller
    from api.gateway.routes import allowed_queues

    # Given a token for generate up to 512x512, and queued jobs of another kind and of a larger size
    record, headers = make_token(kinds=["generate"], max_pixels=512 * 512)
    assert allowed_queues(WorkerCaller(record), None, None) == ["unipic.generate.s"]
    assert allowed_queues(WorkerCaller(record), ["edit"], None) == []
    big = _job(services, owner_id, size=1024)
    other_kind = _job(services, owner_id, kind="understand", size=256)
    small = _job(services, owner_id, size=256)
    # When it claims (asking for everything)
    claimed = {j["job_id"] for j in _claim(client, headers, kinds=["generate", "edit", "understand"],
                                           max_image_pixels=4096 * 4096)["jobs"]}
    # Then only the job it may run is claimed
    assert small.id in claimed and big.id not in claimed and other_kind.id not in claimed
    assert services.jobs.get(big.id).status == "queued" and services.jobs.get(other_kind.id).status == "queued"


def test_revoked_token_is_refused_within_the_bound_and_its_jobs_go_to_another_worker(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker, tokens: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import timedelta

    from storage.tables import utcnow

    # Given a job running under token A, which this API process has checked and remembers (its clock injected)
    cache = services.worker_token_cache
    now = [cache.clock()]
    monkeypatch.setattr(cache, "clock", lambda: now[0])
    record, a = make_token(name="revoked")
    _, b = make_token(name="other")
    job = _job(services, owner_id)
    item = _claimed(client, a, job.id)
    ref = {"worker": "gpu:1", "job_id": job.id, "lease_token": item["lease_token"]}
    assert client.post("/v1/worker/progress", headers=a, json={**ref, "step": 1, "total": 2}).status_code == 200
    # When A is revoked and the revocation bound passes
    tokens.revoke(record.id)
    now[0] += cache.bound
    # Then its next call and every one after is 401, and it writes nothing more
    assert client.post("/v1/worker/progress", headers=a, json={**ref, "step": 2, "total": 2}).status_code == 401
    claims = {"worker": "gpu:1", "claims": [{"job_id": job.id, "lease_token": item["lease_token"]}]}
    assert client.post("/v1/worker/renew", headers=a, json=claims).status_code == 401
    assert _complete(client, a, item, _upload(item, _png())).status_code == 401
    assert client.post("/v1/worker/claim", headers=a, json={"worker": "gpu:1", "wait_seconds": 0}).status_code == 401
    assert client.post("/v1/worker/heartbeat", headers=a, json={"worker": "gpu:1"}).status_code == 401
    running = services.jobs.get(job.id)
    assert (running.status, running.progress_step) == ("running", 1)
    # and once its lease expires the job is queued again and another worker takes it
    assert job.id in services.jobs.requeue_expired(now=utcnow() + timedelta(seconds=120))
    again = _claimed(client, b, job.id)
    assert again["lease_token"] != item["lease_token"] and again["attempts"] == 1


def test_fail_cancel_and_release(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker, redis_client: Any,
) -> None:
    _, headers = make_token()
    failing, canceled, released = (_job(services, owner_id) for _ in range(3))
    claimed = {j["job_id"]: j for j in _claim(client, headers)["jobs"]}
    assert {failing.id, canceled.id, released.id} <= set(claimed)

    def ref(job: JobRecord) -> dict[str, str]:
        return {"worker": "gpu:1", "job_id": job.id, "lease_token": claimed[job.id]["lease_token"]}

    # a code a worker may not set is refused
    assert client.post("/v1/worker/fail", headers=headers, json={**ref(failing), "code": "expired"}).status_code == 422
    assert client.post("/v1/worker/fail", headers=headers,
                       json={**ref(failing), "code": "model_error", "message": "boom"}).json() == {"ok": True}
    assert services.jobs.get(failing.id).error_code == "model_error"
    services.jobs.request_cancel(canceled.id, owner_id)
    renewed = client.post("/v1/worker/renew", headers=headers, json={
        "worker": "gpu:1", "claims": [{"job_id": canceled.id, "lease_token": claimed[canceled.id]["lease_token"]}]})
    assert {k: v for k, v in renewed.json().items() if k != "result_urls"} == {
        "held": [canceled.id], "cancel_requested": [canceled.id]}
    assert list(renewed.json()["result_urls"]) == [canceled.id]  # fresh URLs, for the renewed lease only
    assert client.post("/v1/worker/fail", headers=headers, json={**ref(canceled), "code": "canceled"}).status_code == 200
    assert services.jobs.get(canceled.id).status == "canceled"
    out = client.post("/v1/worker/release", headers=headers, json={"worker": "gpu:1", "claims": [
        {"job_id": released.id, "lease_token": claimed[released.id]["lease_token"]}]})
    assert out.json() == {"released": 1}
    back = services.jobs.get(released.id)
    assert back.status == "queued" and back.attempts == 0
    assert released.id in queued_job_ids(redis_client, back.queue)  # a fresh message: any worker may take it
    for job in claimed.values():  # leave nothing running
        if job["job_id"] not in (failing.id, canceled.id, released.id):
            client.post("/v1/worker/release", headers=headers, json={"worker": "gpu:1", "claims": [
                {"job_id": job["job_id"], "lease_token": job["lease_token"]}]})


def test_heartbeat_shows_the_worker_as_remote(
    client: TestClient, make_token: TokenMaker, api_headers: dict[str, str],
) -> None:
    record, headers = make_token(kinds=["generate", "edit"], max_pixels=1024 * 1024)
    beat = client.post("/v1/worker/heartbeat", headers=headers, json={
        "worker": "home-4090:42", "start": True, "hostname": "home", "pid": 42, "device": "cuda:0",
        "kinds": ["generate", "understand"], "max_pixels": 4096 * 4096, "max_batch": 4})
    assert beat.status_code == 200
    assert beat.json()["kinds"] == ["generate"] and beat.json()["max_pixels"] == 1024 * 1024
    workers = {w["id"]: w for w in client.get("/v1/workers", headers=api_headers).json()["data"]}
    mine = workers[f"remote-{record.id}:home-4090:42"]
    assert mine["transport"] == "remote" and mine["kinds"] == ["generate"]
    assert "(remote)" in client.get("/ui").text
    metrics = client.get("/metrics").text
    assert 'unipic_workers_live_by_transport{transport="remote"}' in metrics
    client.post("/v1/worker/heartbeat", headers=headers, json={"worker": "home-4090:42", "stopping": True})
    workers = {w["id"] for w in client.get("/v1/workers", headers=api_headers).json()["data"]}
    assert f"remote-{record.id}:home-4090:42" not in workers


def test_embedded_deployment_takes_results_through_signed_local_links(embedded_settings: Any) -> None:
    # Given an embedded deployment (SQLite, local objects: signed links served by the API itself)
    from api.app import create_app
    from storage.fleet.tokens import WorkerTokenStore
    from storage.jobs.ids import new_id
    from storage.tables import ApiKey

    app = create_app(embedded_settings.model_copy(update={"api_url": "http://testserver"}))
    services = app.state.services
    owner = new_id()
    with services.jobs.sessions.begin() as s:
        s.add(ApiKey(id=owner, name="t", key_prefix="upk_t", key_hash=new_id(), webhook_secret="whsec_x"))
    _, token = WorkerTokenStore(services.jobs.sessions).create("home")
    headers = {"Authorization": f"Bearer {token}"}
    job = _job(services, owner, kind="edit")
    with TestClient(app) as client:
        item = _claimed(client, headers, job.id)
        # When the worker reads its input and PUTs its result through the signed links
        assert client.get(item["input_url"]).content == services.objects.get(job.input_key)
        data = _png()
        objects = []
        for key, url in item["result_urls"].items():
            assert client.put(url, content=data, headers={"content-type": "image/png"}).status_code == 200
            objects.append({"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        # a signed link for one key does not write another
        other = next(iter(item["result_urls"].values())).replace("/0.png", "/1.png")
        assert client.put(other, content=data).status_code == 401
        # Then complete checks and records it
        assert _complete(client, headers, item, objects).status_code == 200
    assert services.jobs.get(job.id).status == "succeeded"


# ---- every write is bound to its lease -------------------------------------------------------------------------
def _random_idat_png(size: int = 256) -> bytes:
    """A PNG whose header is valid and whose IDAT is random bytes with a correct CRC: it passes `verify()`."""
    import os
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", os.urandom(4096)) + chunk(b"IEND", b"")


def test_a_released_lease_cannot_change_what_the_owner_downloads(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    from storage.lifecycle.store import Lifecycle
    from tests.support.claims import sweep_stale_results_of

    # Given T1 claimed job J and released it (or its token was revoked and its lease expired)
    _, t1 = make_token(name="t1")
    _, t2 = make_token(name="t2")
    job = _job(services, owner_id)
    first = _claimed(client, t1, job.id)
    assert client.post("/v1/worker/release", headers=t1, json={"worker": "gpu:1", "claims": [
        {"job_id": job.id, "lease_token": first["lease_token"]}]}).json() == {"released": 1}
    # and T2 claimed J, uploaded its PNG and completed
    second = _claimed(client, t2, job.id, worker="gpu:2")
    mine = _png()
    assert _complete(client, t2, second, _upload(second, mine), worker="gpu:2").json() == {"ok": True}
    # When T1 PUTs to its old presigned URL
    [(stale_key, stale_url)] = first["result_urls"].items()
    late = _png(64)
    httpx.put(stale_url, content=late)  # S3 cannot refuse a signed PUT; it lands under T1's own lease prefix
    # Then what the owner downloads is T2's result, unchanged
    done = services.jobs.get(job.id)
    assert done.status == "succeeded" and stale_key not in done.result_keys
    assert [services.objects.get(k) for k in done.result_keys] == [mine]
    # and T1 cannot complete with it, and the sweeper deletes T1's object once no stale write can land
    assert _complete(client, t1, first, _upload(first, late)).status_code in (404, 409)
    sweep_stale_results_of(Lifecycle(services.jobs.sessions, services.objects), job.id)
    assert services.objects.page(f"results/{job.id}/") == done.result_keys
    assert services.objects.get(done.result_keys[0]) == mine


def test_result_urls_expire_with_the_lease_and_renewals_hand_out_fresh_ones(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    from urllib.parse import parse_qs, urlparse

    _, headers = make_token()
    job = _job(services, owner_id)
    item = _claimed(client, headers, job.id)
    lease = services.settings.lease_seconds
    [url] = item["result_urls"].values()
    assert int(parse_qs(urlparse(url).query)["X-Amz-Expires"][0]) <= lease
    renewed = client.post("/v1/worker/renew", headers=headers, json={"worker": "gpu:1", "claims": [
        {"job_id": job.id, "lease_token": item["lease_token"]}]}).json()
    assert list(renewed["result_urls"][job.id]) == list(item["result_urls"])
    services.jobs.release([Claim(job.id, item["lease_token"])])


def test_a_retried_claim_returns_the_same_batch_and_costs_no_attempt(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    # Given two queued jobs and a worker whose claim answer was lost on the way back
    _, headers = make_token()
    job, other = _job(services, owner_id), _job(services, owner_id)
    claim_id = "0b8f6f7e-6d1c-4c52-9a4e-3f1c2d5e7a90"
    first = _claim(client, headers, max_items=1, claim_id=claim_id, first_try=True)["jobs"]
    assert [j["job_id"] for j in first] == [job.id]
    # When it retries the claim with the same claim id (saying it is a retry, or as an older worker, saying nothing)
    again = _claim(client, headers, max_items=1, claim_id=claim_id, first_try=False)["jobs"]
    older = _claim(client, headers, max_items=1, claim_id=claim_id)["jobs"]
    # Then it gets the same job under the same lease, the other job is still queued, and no attempt was spent
    assert [(j["job_id"], j["lease_token"]) for j in again] == [(job.id, first[0]["lease_token"])]
    assert older == again
    assert services.jobs.get(other.id).status == "queued"
    assert services.jobs.get(job.id).attempts == 0 and again[0]["attempts"] == 0
    # and a new claim id is a new claim
    fresh = _claim(client, headers, max_items=1, claim_id="5d1e2f3a-0000-4000-8000-000000000001")["jobs"]
    assert [j["job_id"] for j in fresh] == [other.id]
    services.jobs.release([Claim(job.id, first[0]["lease_token"]), Claim(other.id, fresh[0]["lease_token"])])


def test_progress_is_bounded_by_the_jobs_own_steps(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    _, headers = make_token()
    job = _job(services, owner_id)  # 2 steps
    item = _claimed(client, headers, job.id)
    ref = {"worker": "gpu:1", "job_id": job.id, "lease_token": item["lease_token"]}
    for bad in ({"step": 1000000, "total": 1}, {"step": 3, "total": 2}, {"step": 1, "total": 1000}):
        answer = client.post("/v1/worker/progress", headers=headers, json={**ref, **bad})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_progress", bad
    assert client.post("/v1/worker/progress", headers=headers, json={**ref, "step": 1, "total": 2}).status_code == 200
    running = services.jobs.get(job.id)
    assert (running.progress_step, running.progress_total) == (1, 2)
    services.jobs.release([Claim(job.id, item["lease_token"])])


@pytest.mark.parametrize(("data", "code"), [(_random_idat_png(), "result_undecodable"),
                                            (_png(64), "result_wrong_size"),
                                            (_png(256)[:-40], "result_undecodable")])
def test_complete_decodes_every_pixel_and_checks_the_size_the_job_asked_for(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker, data: bytes, code: str,
) -> None:
    _, headers = make_token()
    job = _job(services, owner_id)  # a 256x256 PNG
    item = _claimed(client, headers, job.id)
    answer = _complete(client, headers, item, _upload(item, data))
    assert answer.status_code == 422 and answer.json()["error"]["code"] == code
    assert services.jobs.get(job.id).status == "running"
    services.jobs.release([Claim(job.id, item["lease_token"])])


def test_an_answer_must_be_utf8_within_what_its_tokens_can_decode_to(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    _, headers = make_token(kinds=["understand"])
    job = _job(services, owner_id, kind="understand", size=256)  # max_new_tokens 4
    item = _claimed(client, headers, job.id)
    bad_utf8 = b'{"job_id": "' + job.id.encode() + b'", "text": "\xff\xfe"}'
    assert _complete(client, headers, item, _upload(item, bad_utf8)).json()["error"]["code"] == "answer_not_utf8"
    too_long = json.dumps({"job_id": job.id, "text": "x" * (128 * 4 + 1)}).encode()
    assert _complete(client, headers, item, _upload(item, too_long)).json()["error"]["code"] == "answer_too_long"
    services.jobs.release([Claim(job.id, item["lease_token"])])


def test_on_the_local_store_a_stale_lease_cannot_write_at_all(embedded_settings: Any) -> None:
    # Given an embedded deployment (local objects: the API itself takes signed PUTs and can check the lease)
    from api.app import create_app
    from storage.fleet.tokens import WorkerTokenStore
    from storage.jobs.ids import new_id
    from storage.tables import ApiKey

    app = create_app(embedded_settings.model_copy(update={"api_url": "http://testserver"}))
    services = app.state.services
    owner = new_id()
    with services.jobs.sessions.begin() as s:
        s.add(ApiKey(id=owner, name="t", key_prefix="upk_t", key_hash=new_id(), webhook_secret="whsec_x"))
    tokens = WorkerTokenStore(services.jobs.sessions)
    t1 = {"Authorization": f"Bearer {tokens.create('t1')[1]}"}
    t2 = {"Authorization": f"Bearer {tokens.create('t2')[1]}"}
    job = _job(services, owner)
    with TestClient(app) as client:
        # and T1 claimed J and released it, T2 claimed J
        first = _claimed(client, t1, job.id)
        client.post("/v1/worker/release", headers=t1, json={"worker": "gpu:1", "claims": [
            {"job_id": job.id, "lease_token": first["lease_token"]}]})
        second = _claimed(client, t2, job.id, worker="gpu:2")
        [(key, url)] = second["result_urls"].items()
        mine = _png()
        assert client.put(url, content=mine).status_code == 200
        # When T1 PUTs to its old signed URL, before and after T2 completes
        [stale_url] = first["result_urls"].values()
        assert client.put(stale_url, content=_png(64)).status_code == 409
        declared = [{"key": key, "size": len(mine), "sha256": hashlib.sha256(mine).hexdigest()}]
        assert _complete(client, t2, second, declared, worker="gpu:2").status_code == 200
        assert client.put(stale_url, content=_png(64)).status_code == 409
        assert client.put(url, content=_png(64)).status_code == 409  # and a finished result is final
    # Then nothing but T2's result exists, and it is what the owner downloads
    done = services.jobs.get(job.id)
    assert done.result_keys == [key] and services.objects.page(f"results/{job.id}/") == [key]
    assert services.objects.get(key) == mine


def test_progress_of_several_jobs_is_one_request_each_fenced_by_its_lease(
    client: TestClient, services: Any, owner_id: str, make_token: TokenMaker,
) -> None:
    # Given two jobs claimed under token A and one under token B
    _, a = make_token(name="many-a")
    _, b = make_token(name="many-b")
    claimed = []
    for headers in (a, a, b):  # 2 steps each
        job = _job(services, owner_id)
        claimed.append((job, _claimed(client, headers, job.id, max_items=1)))
    (first, mine0), (second, mine1), (theirs, other) = claimed
    mine = [mine0, mine1]

    def report(job_id: str, lease: str, step: int, total: int = 2) -> dict[str, Any]:
        return {"job_id": job_id, "lease_token": lease, "step": step, "total": total}

    # When A reports both of its jobs (one with a stale lease token) and B's job in one request
    answer = client.post("/v1/worker/progress-many", headers=a, json={"worker": "gpu:1", "reports": [
        report(first.id, mine[0]["lease_token"], 1), report(second.id, "f" * 32, 2),
        report(theirs.id, other["lease_token"], 2)]})
    # Then only its own job under its held lease moved; the stale one and B's are left out, the others unharmed
    assert answer.status_code == 200 and answer.json()["held"] == [first.id]
    assert services.jobs.get(first.id).progress_step == 1
    assert services.jobs.get(second.id).progress_step == 0 and services.jobs.get(theirs.id).progress_step == 0
    # And a report past a job's own step count is refused as a whole, changing nothing
    bad = client.post("/v1/worker/progress-many", headers=a, json={"worker": "gpu:1", "reports": [
        report(second.id, mine[1]["lease_token"], 2), report(first.id, mine[0]["lease_token"], 3)]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_progress"
    assert services.jobs.get(second.id).progress_step == 0
    services.jobs.release([Claim(first.id, mine[0]["lease_token"]), Claim(second.id, mine[1]["lease_token"]),
                           Claim(theirs.id, other["lease_token"])])
