"""Pushed job and batch events on the real stack (the package's bench stack, tests/system/conftest.py: private
Postgres and Redis, S3 server, the API, tiny-model workers, the sweeper): a 200-item batch stream sees every item
exactly once, then `done` with the manifest URL; streams open across a Redis restart still end with their
`done`, and no event arrives twice with different content (the hub resyncs and reconciliation covers what the
restart lost). No sleeps: threads collect the streams, the test waits on their events with liveness bounds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.system.conftest import create_key

pytestmark = pytest.mark.system

LIVENESS_S = 240.0
BODY = {"kind": "generate", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


@dataclass
class Collected:
    """One SSE stream read to its end in a thread."""

    url: str
    headers: dict[str, str]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    first: threading.Event = field(default_factory=threading.Event)
    moved: threading.Event = field(default_factory=threading.Event)  # a status past `queued` arrived
    error: str | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=120)) as r:
                if r.status_code != 200:
                    self.error = f"{r.status_code} {r.read()[:200]!r}"
                    return
                for name, data in sse(r.iter_lines()):
                    self.events.append((name, data))
                    self.first.set()
                    if name == "status" and data["status"] != "queued":
                        self.moved.set()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)
        finally:
            self.first.set()

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


def sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    name, data = None, []
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


@pytest.fixture(scope="module")
def system(bench_stack: Any) -> dict[str, Any]:
    """The package's stack (tests/system/conftest.py) and a key of this module."""
    key = create_key(bench_stack, "events")["key"]
    return {"stack": bench_stack, "headers": {"Authorization": f"Bearer {key}"}}


def test_a_200_item_batch_stream_sees_every_item_once_then_done(system: dict[str, Any]) -> None:
    stack, headers = system["stack"], system["headers"]
    # Given a 200-item batch
    items = [{**BODY, "seed": i, "custom_id": f"item-{i}"} for i in range(200)]
    batch = httpx.post(f"{stack.api_url}/v1/batches", json=items, headers=headers, timeout=60).json()
    # When one stream follows it to its end
    stream = Collected(f"{stack.api_url}/v1/batches/{batch['id']}/events", headers)
    stream.start().join(LIVENESS_S)
    assert stream.error is None, stream.error
    got = [d for n, d in stream.events if n == "item"]
    # Then every item arrives exactly once, then `done` with the manifest URL, last
    assert len(got) == 200 and len({i["job_id"] for i in got}) == 200
    assert {i["custom_id"] for i in got} == {f"item-{i}" for i in range(200)}
    assert all(i["status"] == "succeeded" and i["result"]["images"][0]["url"] for i in got)
    assert stream.names()[-1] == "done" and stream.names().count("done") == 1
    done = stream.events[-1][1]
    assert done["manifest_url"] and done["counts"]["succeeded"] == 200
    manifest = httpx.get(done["manifest_url"], timeout=30).text.splitlines()
    assert sorted(json.loads(line)["job_id"] for line in manifest) == sorted(i["job_id"] for i in got)


def test_streams_open_across_a_redis_restart_all_end_with_done(system: dict[str, Any]) -> None:
    stack, headers = system["stack"], system["headers"]
    workers = [svc for name, svc in stack.services.items() if name.startswith("worker")]
    # Given queued jobs and a batch, with the workers stopped so every stream opens before anything runs
    for worker in workers:
        worker.stop()
    jobs = [httpx.post(f"{stack.api_url}/v1/jobs", json={**BODY, "seed": i}, headers=headers, timeout=30).json()
            for i in range(12)]
    batch = httpx.post(f"{stack.api_url}/v1/batches", json=[{**BODY, "seed": 100 + i, "custom_id": f"b{i}"}
                                                            for i in range(12)], headers=headers, timeout=30).json()
    moved = threading.Event()  # shared: set by the first stream that sees its job move
    streams = [Collected(f"{stack.api_url}/v1/jobs/{j['id']}/events", headers, moved=moved) for j in jobs]
    streams.append(Collected(f"{stack.api_url}/v1/batches/{batch['id']}/events", headers))
    threads = [s.start() for s in streams]
    for s in streams:
        assert s.first.wait(LIVENESS_S) and s.error is None, s.error
    # When the workers start, and Redis restarts (losing its messages) while jobs run and streams are open
    for worker in workers:
        worker.start()
    assert moved.wait(LIVENESS_S), "no job ran"
    stack.redis.restart(down_seconds=1.0)
    for thread in threads:
        thread.join(LIVENESS_S)
    # Then every stream still ends with exactly one `done`, and no event came twice with different content
    for s in streams:
        assert s.error is None, s.error
        assert s.names()[-1] == "done" and s.names().count("done") == 1, (s.url, s.names())
    for s in streams[:-1]:
        statuses = [d["status"] for n, d in s.events if n == "status"]
        assert len(statuses) == len(set(statuses)), statuses
        assert statuses[-1] == "succeeded"
    items = [d["job_id"] for n, d in streams[-1].events if n == "item"]
    assert len(items) == len(set(items)) == 12
