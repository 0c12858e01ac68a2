"""`/v1/jobs`: submission (JSON and multipart), validation errors, idempotency, reads, lists, cancel, wait."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
from PIL import Image, ImageFile

from storage.objects.base import result_key
from tests.support.api import data_url, generate_body, png_bytes, queued_job_ids
from tests.support.claims import claim_job


def finish(job_store: Any, objects: Any, job_id: str, text: str | None = None) -> None:
    """Play the worker: claim the job and complete it with one result image."""
    claims = claim_job(job_store, job_id)
    key = result_key(job_id, claims[0].lease_token, 0, "png")
    objects.put(key, png_bytes(8, 8), content_type="image/png")
    assert job_store.complete(claims[0], [key], text, {"model_seconds": 0.5}, "tiny", "r1")


def test_submit_generate_returns_the_job_and_enqueues_it(client: Any, auth: dict[str, str],
                                                         redis_client: Any) -> None:
    r = client.post("/v1/jobs", json=generate_body(metadata={"user": "u1"}), headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    expected = {"id", "kind", "status", "priority", "params", "created_at", "started_at", "finished_at",
                "progress", "queue_position", "result", "error", "execution", "batch_id", "custom_id", "metadata"}
    assert expected <= set(job)
    assert job["kind"] == "generate" and job["status"] == "queued"
    assert job["params"]["width"] == 256 and job["params"]["guidance_schedule"] == "constant"
    assert isinstance(job["params"]["seed"], int)  # filled in
    assert isinstance(client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["queue_position"], int)
    assert job["metadata"] == {"user": "u1"}
    assert set(job["execution"]) >= {"worker", "batch_size", "attempts", "queue_seconds", "model_seconds"}
    assert queued_job_ids(redis_client, "unipic.generate.s").count(job["id"]) == 1


def test_get_job_is_scoped_to_its_owner(client: Any, make_key: Any) -> None:
    _, mine = make_key()
    _, theirs = make_key()
    job = client.post("/v1/jobs", json=generate_body(), headers=mine).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=mine).json()["id"] == job["id"]
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events"):
        r = client.get(path, headers=theirs)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=theirs)
    assert r.status_code == 404
    listed = client.get("/v1/jobs", headers=theirs).json()["data"]
    assert job["id"] not in [j["id"] for j in listed]


@pytest.mark.parametrize("job_id", ["0190e3f2-0000-7000-8000-000000000000", "not-an-id", "x" * 300])
def test_unknown_job_is_404(client: Any, auth: dict[str, str], job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": r.json()["error"]["message"], "field": None}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (generate_body(width="wide"), "width"),
        (generate_body(width=300, height=300), "width"),
        (generate_body(width=256, height=512), "height"),
        (generate_body(steps=0), "steps"),
        (generate_body(steps=129), "steps"),  # over settings.max_steps
        (generate_body(guidance_scale=-1), "guidance_scale"),
        (generate_body(temperature=0), "temperature"),
        (generate_body(num_images=5), "num_images"),
        (generate_body(prompt=""), "prompt"),
        (generate_body(prompt="   "), "prompt"),
        (generate_body(guidance_schedule="cosine"), "guidance_schedule"),
        (generate_body(surprise=1), "surprise"),
        (generate_body(metadata={"blob": "x" * 17_000}), "metadata"),
        (generate_body(seed=-1), "seed"),
        ({"kind": "paint", "prompt": "x"}, "kind"),
        ({"prompt": "no kind"}, "kind"),
        ({"kind": "understand", "question": "what?", "image": "data:image/png;base64,AAAA",
          "max_new_tokens": 5000}, "max_new_tokens"),
        ({"kind": "edit", "instruction": "make it blue"}, "image"),
    ],
)
def test_invalid_values_are_422_naming_the_field(client: Any, auth: dict[str, str], body: dict[str, Any],
                                                 field: str) -> None:
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field, error


def test_prompt_over_the_token_limit_is_422(client: Any, auth: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json=generate_body(prompt="castle " * 600), headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "prompt_too_long" and r.json()["error"]["field"] == "prompt"
    # long in bytes but within the token limit (the byte bound alone would refuse it)
    r = client.post("/v1/jobs", json=generate_body(prompt="a" * 800), headers=auth)
    assert r.status_code == 202, r.text


def test_malformed_json_and_media_types(client: Any, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    r = client.post("/v1/jobs", content=b'{"kind": "generate", "prompt": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/jobs", content=b"[1, 2]", headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = client.post("/v1/jobs", content=b"kind=generate", headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_edit_with_data_url_stores_a_normalized_input(client: Any, auth: dict[str, str], app: Any) -> None:
    # Given a JPEG whose EXIF says "rotate 90°" (orientation 6), 40 wide and 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = png_bytes(40, 20, fmt="JPEG", exif=exif)
    # When it is submitted as an edit
    body = {"kind": "edit", "instruction": "make it blue", "image": data_url(jpeg, "image/jpeg"), "width": 256}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert "image" not in job["params"]
    # Then the stored input is an upright RGB PNG (20 wide, 40 high)
    services = app.state.services
    record = services.jobs.get(job["id"])
    assert record.input_key == f"inputs/{job['id']}/image.png"
    stored = Image.open(io.BytesIO(services.objects.get(record.input_key)))
    assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == (20, 40)


@pytest.mark.parametrize(
    ("image", "status", "code"),
    [
        (data_url(b"definitely not an image"), 400, "invalid_image"),
        (data_url(png_bytes()[:60]), 400, "invalid_image"),  # truncated
        ("data:image/png;base64,@@@not-base64@@@", 400, "invalid_image"),
        (data_url(png_bytes(fmt="GIF"), "image/gif"), 415, "unsupported_media_type"),
        (data_url(png_bytes(fmt="GIF"), "image/png"), 415, "unsupported_media_type"),  # sniffed, not trusted
        (data_url(png_bytes(1100, 1000)), 413, "image_too_large"),  # over max_upload_pixels, decoded never
        (data_url(b"\0" * (300 * 1024)), 413, "payload_too_large"),
        ("https://example.com/cat.png", 422, "validation_error"),
    ],
)
def test_bad_images_are_refused(client: Any, auth: dict[str, str], image: str, status: int, code: str) -> None:
    body = {"kind": "understand", "question": "what is this?", "image": image}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] == "image"


def test_bomb_is_refused_before_decoding(client: Any, auth: dict[str, str]) -> None:
    # a 1-bit 8000x8000 PNG: 64 million pixels in a few kilobytes
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, format="PNG")
    bomb = out.getvalue()
    assert len(bomb) < 64 * 1024
    decoded: list[Any] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:  # observe: the pixels must never be decoded
        decoded.append(self.size)
        return original(self)

    ImageFile.ImageFile.load = spy  # type: ignore[method-assign]
    try:
        r = client.post("/v1/jobs", json={"kind": "understand", "question": "q", "image": data_url(bomb)},
                        headers=auth)
    finally:
        ImageFile.ImageFile.load = original  # type: ignore[method-assign]
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    assert decoded == []


def test_multipart_with_request_part_and_with_form_fields(client: Any, auth: dict[str, str], app: Any) -> None:
    files = {"image": ("cat.png", png_bytes(64, 48), "application/octet-stream")}
    request = json.dumps({"kind": "understand", "question": "what color?", "max_new_tokens": 16})
    r = client.post("/v1/jobs", files=files, data={"request": request}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["max_new_tokens"] == 16
    form = {"kind": "edit", "instruction": "add a hat", "width": "256", "steps": "8", "metadata": '{"a": 1}'}
    r = client.post("/v1/jobs", files=files, data=form, headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["params"]["width"] == 256 and job["params"]["steps"] == 8 and job["metadata"] == {"a": 1}
    assert app.state.services.objects.exists(f"inputs/{job['id']}/image.png")
    # a bad file part is refused like a bad data: URL
    bad = {"image": ("x.png", b"GIF89a not really", "image/png")}
    r = client.post("/v1/jobs", files=bad, data={"request": request}, headers=auth)
    assert r.status_code in (400, 415) and r.json()["error"]["code"] in ("invalid_image", "unsupported_media_type")


def test_oversized_body_is_413_before_parsing(client: Any, auth: dict[str, str]) -> None:
    huge = b'{"kind": "generate", "prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    r = client.post("/v1/jobs", content=huge, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"a" * (64 * 1024)

    r = client.post("/v1/jobs", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_idempotency_key(client: Any, auth: dict[str, str], redis_client: Any) -> None:
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=generate_body(), headers=headers)
    again = client.post("/v1/jobs", json=generate_body(), headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert queued_job_ids(redis_client, "unipic.generate.s").count(first.json()["id"]) == 1
    other = client.post("/v1/jobs", json=generate_body(prompt="another"), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_auth_failures_are_401(client: Any, make_key: Any, key_store: Any) -> None:
    record, headers = make_key()
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    key_store.revoke(record.id)
    for h in (headers, {}, {"Authorization": "Bearer upk_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = client.post("/v1/jobs", json=generate_body(), headers=h)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (h, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_list_filters_and_cursor_pagination(client: Any, auth: dict[str, str]) -> None:
    ids = [client.post("/v1/jobs", json=generate_body(), headers=auth).json()["id"] for _ in range(5)]
    understand = client.post("/v1/jobs", headers=auth, json={
        "kind": "understand", "question": "q", "image": data_url(png_bytes())}).json()["id"]
    seen, cursor = [], None
    while True:
        params = {"kind": "generate", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once, no understand job
    page = client.get("/v1/jobs", params={"kind": "understand", "status": "queued"}, headers=auth).json()
    assert [j["id"] for j in page["data"]] == [understand]
    assert client.get("/v1/jobs", params={"status": "succeeded"}, headers=auth).json()["data"] == []
    r = client.get("/v1/jobs", params={"status": "bogus"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "status"
    r = client.get("/v1/jobs", params={"created_after": "2020-01-01T00:00:00Z"}, headers=auth)
    assert len(r.json()["data"]) == 6
    r = client.get("/v1/jobs", params={"created_before": "2020-01-01T00:00:00Z"}, headers=auth)
    assert r.json()["data"] == []
    for bad in ({"created_after": "yesterday"}, {"created_before": "2020-13-01"}, {"limit": "0"}):
        r = client.get("/v1/jobs", params=bad, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == next(iter(bad)), r.text


def test_cancel_queued_then_again(client: Any, auth: dict[str, str]) -> None:
    job = client.post("/v1/jobs", json=generate_body(), headers=auth).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert r.json()["error"]["code"] == "canceled"
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition"


def test_running_job_shows_progress_and_cancel_request(client: Any, auth: dict[str, str], app: Any) -> None:
    services = app.state.services
    job = client.post("/v1/jobs", json=generate_body(width=512, height=512, steps=7), headers=auth).json()
    claims = claim_job(services.jobs, job["id"], "w1")
    services.jobs.set_progress(claims[0], 3, 7)
    view = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert view["status"] == "running" and view["progress"] == {"step": 3, "total": 7}
    assert view["queue_position"] is None and view["execution"]["worker"] == "w1"
    services.jobs.set_progress(claims[0], 5, 7)  # each write the worker makes is what the API shows
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"] == {"step": 5, "total": 7}
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True


def test_wait_returns_once_the_job_is_done(client: Any, auth: dict[str, str], app: Any) -> None:
    services = app.state.services
    job = client.post("/v1/jobs", json=generate_body(), headers=auth).json()

    def finish_later() -> None:
        time.sleep(0.5)
        finish(services.jobs, services.objects, job["id"])

    worker = threading.Thread(target=finish_later)
    worker.start()
    r = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth)
    worker.join()
    done = r.json()
    assert done["status"] == "succeeded", done
    [image] = done["result"]["images"]
    assert image["width"] == 256 and image["height"] == 256 and image["expires_at"]
    assert done["execution"]["model_seconds"] == 0.5 and done["progress"]["step"] == done["progress"]["total"]
    import httpx

    fetched = httpx.get(image["url"])  # the presigned S3 URL really serves the object
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    r = client.get(f"/v1/jobs/{job['id']}", params={"wait": 61}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "wait"


def test_rate_limit_is_429_with_retry_after(client: Any, make_key: Any) -> None:
    _, headers = make_key(rate_limit_per_minute=2)
    codes = [client.get("/v1/jobs", headers=headers).status_code for _ in range(3)]
    assert codes[:2] == [200, 200]
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 61


def test_quota_is_429_with_retry_after(client: Any, make_key: Any) -> None:
    _, headers = make_key(max_active_jobs=2)
    assert [client.post("/v1/jobs", json=generate_body(), headers=headers).status_code for _ in range(2)] == [202] * 2
    r = client.post("/v1/jobs", json=generate_body(), headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert int(r.headers["Retry-After"]) >= 1
    r = client.post("/v1/batches", json=[generate_body()], headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"


def test_key_cache_lets_a_revocation_lag_by_at_most_its_ttl(client: Any, app: Any, make_key: Any,
                                                            key_store: Any) -> None:
    cache = app.state.services.key_cache
    now = [1000.0]
    cache.ttl, cache.clock = 0.3, lambda: now[0]
    try:
        record, headers = make_key()
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        key_store.revoke(record.id)
        now[0] += 0.29  # within the cache's ttl: the revoked key still works
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        now[0] += 0.02  # past it
        assert client.get("/v1/jobs", headers=headers).status_code == 401
    finally:
        cache.ttl, cache.clock = 0, time.monotonic


def test_transparent_input_is_flattened_onto_white(client: Any, auth: dict[str, str], app: Any) -> None:
    out = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(out, format="PNG")  # fully transparent "black"
    r = client.post("/v1/jobs", json={"kind": "understand", "question": "q", "image": data_url(out.getvalue())},
                    headers=auth)
    assert r.status_code == 202, r.text
    services = app.state.services
    stored = Image.open(io.BytesIO(services.objects.get(services.jobs.get(r.json()["id"]).input_key)))
    assert stored.mode == "RGB" and stored.getpixel((0, 0)) == (255, 255, 255)
