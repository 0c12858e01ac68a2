"""The presigned upload flow (S3 and local directory), the signed object routes, and upload bounds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.api import generate_body, png_bytes
from tests.support.claims import claim_job


def test_s3_presigned_put_then_submit(client: Any, auth: dict[str, str], app: Any) -> None:
    # Given an upload slot
    r = client.post("/v1/uploads", json={"content_type": "image/png"}, headers=auth)
    assert r.status_code == 201, r.text
    slot = r.json()
    assert slot["method"] == "PUT" and slot["expires_at"] and slot["max_bytes"] == 256 * 1024
    # When the client PUTs the bytes straight to S3 and submits a job naming the upload
    put = httpx.put(slot["url"], content=png_bytes(50, 30), headers=slot["headers"])
    assert put.status_code == 200, put.text
    r = client.post("/v1/jobs", json={"kind": "edit", "instruction": "x", "width": 256,
                                      "image": {"upload_id": slot["upload_id"]}}, headers=auth)
    # Then the job is accepted with the normalized input stored under its own key
    assert r.status_code == 202, r.text
    assert app.state.services.objects.exists(f"inputs/{r.json()['id']}/image.png")


def test_upload_ids_are_scoped_and_checked(client: Any, make_key: Any) -> None:
    _, mine = make_key()
    _, theirs = make_key()
    slot = client.post("/v1/uploads", headers=mine).json()
    missing = {"kind": "understand", "question": "q", "image": {"upload_id": slot["upload_id"]}}
    r = client.post("/v1/jobs", json=missing, headers=mine)  # never uploaded
    assert r.status_code == 404 and r.json()["error"]["field"] == "image.upload_id"
    assert client.put(f"/v1/uploads/{slot['upload_id']}", content=png_bytes(), headers=mine).status_code == 200
    assert client.post("/v1/jobs", json=missing, headers=theirs).status_code == 404  # another key's upload
    r = client.put(f"/v1/uploads/{slot['upload_id']}", content=png_bytes(), headers=theirs)
    assert r.status_code == 404
    assert client.post("/v1/jobs", json=missing, headers=mine).status_code == 202


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "invalid_image"),
        (b"hello, not an image", 400, "invalid_image"),
        (png_bytes(fmt="BMP"), 415, "unsupported_media_type"),
        (png_bytes(1100, 1000), 413, "image_too_large"),
        (b"\x89PNG" + b"\0" * (300 * 1024), 413, "payload_too_large"),
    ],
)
def test_put_upload_refuses_bad_bytes_early(client: Any, auth: dict[str, str], content: bytes, status: int,
                                            code: str) -> None:
    slot = client.post("/v1/uploads", headers=auth).json()
    r = client.put(f"/v1/uploads/{slot['upload_id']}", content=content, headers=auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_streamed_upload_without_length_is_counted(client: Any, auth: dict[str, str]) -> None:
    slot = client.post("/v1/uploads", headers=auth).json()

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"\0" * (64 * 1024)

    r = client.put(f"/v1/uploads/{slot['upload_id']}", content=chunks(), headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@pytest.fixture
def local_client(embedded_settings: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An app in embedded mode (SQLite, local objects, SQLite broker) whose signed links point at itself."""
    from api.app import create_app

    settings = embedded_settings.model_copy(update={"public_url": "http://testserver",
                                                    "max_upload_bytes": 256 * 1024})
    app = create_app(settings)
    _, plaintext = app.state.services.keys.create("local")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {plaintext}"}


def test_local_backend_signed_upload_and_download(local_client: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = local_client
    services = client.app.state.services  # type: ignore[attr-defined]
    # Given a signed upload link to the API itself
    slot = client.post("/v1/uploads", headers=auth).json()
    assert slot["url"].startswith("http://testserver/v1/objects/uploads/")
    # a tampered signature or a non-upload key is refused; the real link takes the bytes
    assert client.put(slot["url"].replace("sig=", "sig=0"), content=png_bytes()).status_code == 401
    r = client.put(slot["url"], content=png_bytes(40, 40))
    assert r.status_code == 200, r.text
    # When a job names the upload and (played) succeeds
    job = client.post("/v1/jobs", json={"kind": "edit", "instruction": "x", "width": 256,
                                        "image": {"upload_id": slot["upload_id"]}}, headers=auth)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    [claim] = claim_job(services.jobs, job_id, "w")
    key = f"results/{job_id}/{claim.lease_token}/0.png"
    services.objects.put(key, png_bytes(8, 8), content_type="image/png")
    services.jobs.complete(claim, [key])
    # Then the result URL is a signed link the API streams, and only with a valid signature
    url = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["result"]["images"][0]["url"]
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert client.get(url.replace("expires=", "expires=1")).status_code == 401
    assert client.get("/v1/objects/results/x/0.png?expires=99999999999&sig=abc").status_code == 401
    assert client.get("/v1/objects/..%2Fsecret?expires=99999999999&sig=abc").status_code in (401, 404)
    signed_put, _ = services.objects.presign_put(f"results/{job_id}/0.png")
    assert client.put(signed_put, content=b"overwrite").status_code == 404  # only uploads/ is writable


def test_local_backend_embedded_submit_and_batch(local_client: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = local_client
    r = client.post("/v1/jobs", json=generate_body(), headers=auth)
    assert r.status_code == 202, r.text
    services = client.app.state.services  # type: ignore[attr-defined]
    services.enqueuer.marks.flush()
    assert services.jobs.get(r.json()["id"]).last_enqueued_at is not None  # sent on the SQLite broker
    r = client.post("/v1/batches", json=[generate_body(), generate_body()], headers=auth)
    assert r.status_code == 202 and r.json()["counts"]["queued"] == 2
    assert client.get("/readyz").status_code == 200


def test_s3_backend_has_no_object_routes(client: Any) -> None:
    assert client.get("/v1/objects/results/x/0.png?expires=1&sig=a").status_code == 404
