"""`Client.wait` / `AsyncClient.wait` over a job's event stream, read by httpx-sse: events in order, the deadline
kept while only keep-alive comments arrive, and the long-poll fallback when the answer is not an event stream.

The server side is httpx's own `MockTransport` speaking the wire format of `GET /v1/jobs/{id}/events`
(api/events/job_stream.py: `id`, `event`, `data` fields, `: keep-alive` comments), so these run without a stack; the
system tests in test_client.py and test_async.py wait on the real one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from unipic_client import AsyncClient, Client, Job, Progress, WaitTimeout

JOB_ID = "01a243d5-0000-7000-8000-000000000001"
BASE = "http://unipic.test"


def job(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": JOB_ID, "kind": "generate", "status": status, "created_at": "2026-12-05T00:00:00Z", **fields}


def event(seq: int, name: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()


STORY = [event(1, "status", job("queued")), b": keep-alive\n\n", event(2, "status", job("running")),
         event(3, "progress", {"step": 2, "total": 4}),
         event(4, "status", job("succeeded", progress={"step": 4, "total": 4})),
         event(5, "done", job("succeeded", progress={"step": 4, "total": 4}))]


def stream_answer(chunks: Iterator[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks)


def quiet_after_queued() -> Iterator[bytes]:
    """A stream that says `queued`, then only keeps itself alive."""
    yield event(1, "status", job("queued"))
    while True:
        yield b": keep-alive\n\n"


def sync_client(handler: Any) -> Client:
    return Client(BASE, "upk_test", http=httpx.Client(base_url=BASE + "/", transport=httpx.MockTransport(handler)))


def test_wait_follows_the_events_to_done() -> None:
    seen: list[tuple[str, Progress | None]] = []
    requests: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return stream_answer(iter(STORY))

    with sync_client(serve) as client:
        done = client.wait(JOB_ID, timeout=30, on_progress=lambda j, p: seen.append((j.status, p)))
    assert done.status == "succeeded" and done.progress == Progress(step=4, total=4)
    assert seen == [("queued", None), ("running", None), ("running", Progress(step=2, total=4)),
                    ("succeeded", Progress(step=4, total=4)), ("succeeded", Progress(step=4, total=4))]
    assert [r.url.path for r in requests] == [f"/v1/jobs/{JOB_ID}/events"]
    assert requests[0].headers["accept"] == "text/event-stream"


def test_the_deadline_holds_while_only_keep_alives_arrive() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        return stream_answer(quiet_after_queued())

    with sync_client(serve) as client, pytest.raises(WaitTimeout) as caught:
        client.wait(JOB_ID, timeout=0.2)
    assert isinstance(caught.value.last, Job) and caught.value.last.status == "queued"


def test_an_answer_that_is_no_event_stream_falls_back_to_long_polling() -> None:
    polls: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>a proxy page</html>")
        polls.append(request)
        return httpx.Response(200, json=job("succeeded"))

    with sync_client(serve) as client:
        assert client.wait(JOB_ID, timeout=30).status == "succeeded"
    assert len(polls) == 1 and "wait" in polls[0].url.params


def test_async_wait_follows_the_events_and_keeps_its_deadline() -> None:
    async def chunks(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def scenario() -> tuple[Job, WaitTimeout]:
        story = True

        async def serve(request: httpx.Request) -> httpx.Response:
            parts = iter(STORY) if story else quiet_after_queued()
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks(parts))

        http = httpx.AsyncClient(base_url=BASE + "/", transport=httpx.MockTransport(serve))
        async with AsyncClient(BASE, "upk_test", http=http) as client:
            done = await client.wait(JOB_ID, timeout=30)
            story = False
            with pytest.raises(WaitTimeout) as caught:
                await client.wait(JOB_ID, timeout=0.2)
        return done, caught.value

    done, timed_out = asyncio.run(scenario())
    assert done.status == "succeeded"
    assert isinstance(timed_out.last, Job) and timed_out.last.status == "queued"
