"""`GET /v1/jobs/{id}/events`: server-sent events from a real uvicorn server, driven step by step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from storage.objects.base import result_key
from tests.support.api import generate_body, png_bytes
from tests.support.claims import claim_job
from tests.support.serving import serve_app


@pytest.fixture(scope="module")
def server_url(app: Any) -> Iterator[str]:
    """The module's app served by uvicorn on a free port, in a thread."""
    with serve_app(app, lifespan="off") as url:
        yield url


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an SSE response, as they arrive."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def test_stream_follows_the_job_to_its_end(server_url: str, auth: dict[str, str], app: Any) -> None:
    services = app.state.services
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as http:
        job = http.post("/v1/jobs", json=generate_body(steps=4)).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            stream = events(r)
            # Given the stream opened on a queued job
            assert next(stream)[1]["status"] == "queued"
            # When a worker claims it, the stream says running
            [claim] = claim_job(services.jobs, job["id"], "w")
            name, data = next(stream)
            assert (name, data["status"]) == ("status", "running")
            # progress is streamed as it changes
            services.jobs.set_progress(claim, 2, 4)
            assert next(stream) == ("progress", {"step": 2, "total": 4})
            # and the terminal state ends the stream with the result
            key = result_key(job["id"], claim.lease_token, 0, "png")
            services.objects.put(key, png_bytes(4, 4), content_type="image/png")
            services.jobs.complete(claim, [key])
            rest = list(stream)
    assert [n for n, _ in rest][-2:] == ["status", "done"]
    done = rest[-1][1]
    assert done["status"] == "succeeded" and done["result"]["images"][0]["url"]


def test_stream_of_a_finished_job_ends_at_once(server_url: str, auth: dict[str, str]) -> None:
    with httpx.Client(base_url=server_url, headers=auth, timeout=30) as http:
        job = http.post("/v1/jobs", json=generate_body()).json()
        http.post(f"/v1/jobs/{job['id']}/cancel")
        r = http.get(f"/v1/jobs/{job['id']}/events")
    got = list(events(r))
    assert [n for n, _ in got] == ["status", "done"] and got[1][1]["status"] == "canceled"


def test_stream_errors(server_url: str, auth: dict[str, str]) -> None:
    with httpx.Client(base_url=server_url, timeout=30) as http:
        r = http.get("/v1/jobs/0190e3f2-0000-7000-8000-000000000000/events", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert http.get("/v1/jobs/0190e3f2-0000-7000-8000-000000000000/events").status_code == 401
