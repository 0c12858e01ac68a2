"""Batch manifests never hand out a dead link, and one producer writes every manifest line.

The app runs embedded (SQLite, local objects whose signed links the API itself serves), so the whole server's
notion of time is injected: the object store's and the manifest links' clocks are the test's `Clock`, and "the
next morning" is `clock.advance`, not a sleep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from storage.objects.local import LocalObjectStore
from tests.support.api import data_url, generate_body, png_bytes
from tests.support.claims import claim_job
from tests.support.webhooks import Clock
from workers.webhooks.payload import batch_data

PRESIGN_SECONDS = 60  # the shortest lifetime the settings allow, as in the report of the bug


@pytest.fixture(name="clock")
def clock_fixture() -> Clock:
    return Clock()


@pytest.fixture(name="client")
def client_fixture(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    from api.app import create_app
    from storage.migrate import upgrade
    from storage.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "data", model="tiny", model_dtype="float32",
                             rate_limit_per_minute=100_000, public_url="http://testserver",
                             presign_expiry_seconds=PRESIGN_SECONDS)
    upgrade(settings)
    app = create_app(settings)
    services = app.state.services
    assert isinstance(services.objects, LocalObjectStore)
    services.objects.clock = lambda: clock().timestamp()
    services.manifests.clock = clock
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def lines(jsonl: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonl.splitlines()]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each event in a server-sent event stream (comments skipped)."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def finished_batch(client: TestClient) -> tuple[dict[str, str], str, dict[str, bytes]]:
    """A finished batch of four items (two images, one image, a failure, an answer): the owner's headers, the
    batch id and the stored bytes of every result image by key."""
    services = client.app.state.services  # type: ignore[attr-defined]
    _, plaintext = services.keys.create("manifests")
    headers = {"Authorization": f"Bearer {plaintext}"}
    items = [generate_body(custom_id="two", num_images=2), generate_body(custom_id="one"),
             generate_body(custom_id="bad"),
             {"kind": "understand", "question": "q", "image": data_url(png_bytes()), "custom_id": "text"}]
    batch = client.post("/v1/batches", json=items, headers=headers).json()
    stored: dict[str, bytes] = {}
    for job in services.batches.jobs(batch["id"]):
        [claim] = claim_job(services.jobs, job.id)
        if job.custom_id == "bad":
            services.jobs.fail(claim, "model_error", "boom")
        elif job.custom_id == "text":
            services.jobs.complete(claim, [], "a red square")
        else:
            # under the claim's own lease prefix, where a worker writes them
            keys = [f"results/{job.id}/{claim.lease_token}/{i}.png" for i in range(int(job.params["num_images"]))]
            for i, key in enumerate(keys):
                stored[key] = png_bytes(4 + i, 4)
                services.objects.put(key, stored[key], content_type="image/png")
            services.jobs.complete(claim, keys)
    return headers, batch["id"], stored


def test_a_manifest_read_after_the_presign_expiry_downloads_every_image(client: TestClient, clock: Clock) -> None:
    # Given a finished batch, its manifest link, and the manifest as read at once
    headers, batch_id, stored = finished_batch(client)
    view = client.get(f"/v1/batches/{batch_id}", headers=headers).json()
    assert view["status"] == "completed" and view["manifest_url"]
    first_read = lines(client.get(view["manifest_url"]).text)
    old_links = [image["url"] for line in first_read if line["result"] for image in line["result"]["images"]]
    assert len(old_links) == 3 and all(client.get(url).status_code == 200 for url in old_links)
    # When the next morning comes, long past the presign expiry
    clock.advance(PRESIGN_SECONDS + 12 * 3600)
    assert all(client.get(url).status_code == 401 for url in old_links)  # what a manifest signed once hands out
    # Then the same manifest link still works and hands out only fresh links: every image downloads
    answer = client.get(view["manifest_url"])
    assert answer.status_code == 200
    manifest = lines(answer.text)
    assert [line["custom_id"] for line in manifest] == ["two", "one", "bad", "text"]
    images = [image for line in manifest if line["result"] for image in line["result"]["images"]]
    assert sorted(image["key"] for image in images) == sorted(stored)
    for image in images:
        got = client.get(image["url"])
        assert got.status_code == 200 and got.content == stored[image["key"]]
        assert image["expires_at"] > clock().isoformat()
    assert manifest[2]["error"] == {"code": "model_error", "message": "boom"}
    assert manifest[3]["result"] == {"images": [], "text": "a red square"}
    # and once the link itself expires (with the results), the owner's key still reads it; the link does not
    clock.advance(client.app.state.services.settings.result_ttl)  # type: ignore[attr-defined]
    assert client.get(view["manifest_url"]).status_code == 401
    assert lines(client.get(f"/v1/batches/{batch_id}/manifest", headers=headers).text)[0]["custom_id"] == "two"


def test_the_stream_the_route_and_the_webhook_share_one_producer(client: TestClient) -> None:
    # Given a finished batch (the clock stands still, so links signed twice are the same)
    headers, batch_id, _ = finished_batch(client)
    services = client.app.state.services  # type: ignore[attr-defined]
    # When it is read as a manifest, as the batch's event stream, and as the webhook renders it
    manifest = client.get(f"/v1/batches/{batch_id}/manifest", headers=headers).text
    with client.stream("GET", f"/v1/batches/{batch_id}/events", headers=headers) as r:
        events = sse_events(r.read().decode())
    items = [data for name, data in events if name == "item"]
    [done] = [data for name, data in events if name == "done"]
    batch = services.batches.get(batch_id)
    webhook = batch_data(batch, {}, services.manifests.link(batch))
    # Then the stream's items are the manifest's lines, and the view, the stream and the webhook link alike
    assert items == lines(manifest)
    view = client.get(f"/v1/batches/{batch_id}", headers=headers).json()
    assert view["manifest_url"] == done["manifest_url"] == webhook["manifest_url"]
