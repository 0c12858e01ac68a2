"""The synchronous SDK against the real stack (Postgres, Redis, S3, a tiny-model worker process)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.sdk.faults import FlakyTransport
from tests.support.stack import Stack
from unipic_client import ApiError, Client, Job, RetryPolicy, WaitTimeout

pytestmark = pytest.mark.system

FAST = {"size": 64, "steps": 2}


def client_for(stack: Stack, key: str, transport: httpx.BaseTransport | None = None, **kw: object) -> Client:
    http = httpx.Client(base_url=stack.url + "/", headers={"Authorization": f"Bearer {key}"},
                        transport=transport, timeout=60) if transport else None
    return Client(stack.url, key, http=http, **kw)  # type: ignore[arg-type]


def png(color: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="PNG")
    return out.getvalue()


def test_generate_wait_over_sse_and_save(prod_stack: Stack, new_key: str, tmp_path: Path) -> None:
    seen: list[str] = []
    with client_for(prod_stack, new_key) as client:
        # When a job is submitted and waited for over SSE, following its progress
        job = client.generate("a blue circle", **FAST)
        done = client.wait(job, timeout=120, on_progress=lambda j, _p: seen.append(j.status))
        # Then it succeeded, the hook saw it, and the image saved is a 64 px PNG
        assert done.status == "succeeded", done.error
        assert seen and seen[-1] == "succeeded"
        (path,) = client.save(done, tmp_path / "circle.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 64)


def test_wait_by_long_polling_and_timeout(prod_stack: Stack, new_key: str) -> None:
    with client_for(prod_stack, new_key) as client:
        job = client.generate("a red square", **FAST)
        assert client.wait(job.id, timeout=120, sse=False).status == "succeeded"
        # a 2048 px job waits in a queue no test worker serves: waiting gives up with the last state
        stuck = client.generate("too big", size=2048, steps=2)
        with pytest.raises(WaitTimeout) as caught:
            client.wait(stuck, timeout=0.5)
        assert caught.value.last.status == "queued"
        assert client.cancel_job(stuck.id).status == "canceled"


def test_retries_reuse_the_idempotency_key_so_one_job_is_made(prod_stack: Stack, new_key: str) -> None:
    # Given a network that refuses the first connection, then answers 429 with Retry-After once
    transport = FlakyTransport(["connect", 429])
    delays: list[float] = []
    with client_for(prod_stack, new_key, transport, retry=RetryPolicy(base_delay=0.01)) as client:
        client.sleep = delays.append  # observe the waits instead of sleeping them
        # When one job is submitted
        job = client.generate("retried", **FAST)
        # Then three POSTs were sent with one Idempotency-Key, the 429's Retry-After was honoured,
        # and exactly one job exists
        posts = [r for r in transport.sent if r.method == "POST"]
        assert len(posts) == 3 and len({r.headers["idempotency-key"] for r in posts}) == 1
        assert delays[1] == pytest.approx(0.2)
        assert [j.id for j in client.iter_jobs()] == [job.id]
        # and a replay with an explicit key answers the same job
        again = client.submit({"kind": "generate", "prompt": "retried", **FAST},
                              idempotency_key=posts[0].headers["idempotency-key"])
        assert again.id == job.id


def test_errors_are_typed(prod_stack: Stack, new_key: str) -> None:
    with client_for(prod_stack, new_key, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ApiError) as caught:
            client.generate("bad size", size=999)
        assert caught.value.status == 422 and caught.value.code == "validation_error"
        with pytest.raises(ApiError) as missing:
            client.get_job("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404
    with pytest.raises(ApiError) as unreachable:
        Client("http://127.0.0.1:9", new_key, retry=RetryPolicy(max_retries=1, base_delay=0.01)).get_job("x")
    assert unreachable.value.code == "unreachable"


def test_upload_edit_and_understand(prod_stack: Stack, new_key: str, tmp_path: Path) -> None:
    with client_for(prod_stack, new_key) as client:
        upload_id = client.upload(png())
        edited = client.wait(client.edit({"upload_id": upload_id}, "make it red", **FAST), timeout=120)
        assert edited.status == "succeeded", edited.error
        source = tmp_path / "in.png"
        source.write_bytes(png((200, 10, 10)))
        answer = client.wait(client.understand(source, "what color?", size=64, max_new_tokens=4), timeout=120)
        assert answer.status == "succeeded" and isinstance(answer.text, str)


def test_batch_from_jsonl_streams_results_and_saves_the_manifest(prod_stack: Stack, new_key: str,
                                                                 tmp_path: Path) -> None:
    # Given a JSONL file of three jobs
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"kind": "generate", "prompt": f"p{i}", "custom_id": f"c{i}",
                                           "width": 64, "height": 64, "steps": 2}) for i in range(3)) + "\n")
    with client_for(prod_stack, new_key) as client:
        # When it is submitted (twice with the same key: a retried submission) and its results streamed
        batch = client.submit_batch(items, idempotency_key="batch-once")
        assert client.submit_batch(items, idempotency_key="batch-once").id == batch.id
        finished: list[Job] = list(client.iter_results(batch, timeout=180))
        # Then each item came back once, succeeded, and the manifest lists all three
        assert sorted(j.custom_id or "" for j in finished) == ["c0", "c1", "c2"]
        assert all(j.status == "succeeded" for j in finished)
        final = client.wait_batch(batch.id, timeout=60)
        assert final.done and final.counts.succeeded == 3
        lines = client.download_manifest(final).decode().splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in lines) == ["c0", "c1", "c2"]
        listed = client.list_batches().data
        assert [b.id for b in listed] == [batch.id] and listed[0].counts.succeeded == 3


def test_run_batch_from_an_iterable(prod_stack: Stack, new_key: str) -> None:
    with client_for(prod_stack, new_key) as client:
        bodies = ({"kind": "generate", "prompt": f"q{i}", **FAST} for i in range(2))
        done = list(client.run_batch(bodies, timeout=180))
    assert len(done) == 2 and {j.status for j in done} == {"succeeded"}
