"""A gateway worker newer than its API: against a gateway without the `progress-many` and `cancels` routes (the
real app, with those two paths answered 404 in front of it, as an API released before them answers), the worker
reports progress job by job and reads cancel requests itself, and a cancel still reaches a running batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gateway.remote import remote_runner, routes_sent
from tests.support.jobs import make_job
from tests.support.waiting import wait_for
from workers.faults import FaultInjector

NEWER_ROUTES = ("/v1/worker/progress-many", "/v1/worker/cancels")


@pytest.fixture(scope="module")
def older_client(migrated: Any) -> Iterator[TestClient]:
    from starlette.responses import JSONResponse
    from starlette.types import Receive, Scope, Send

    from api.app import create_app

    app = create_app(migrated.model_copy(update={"rate_limit_per_minute": 100_000, "lease_seconds": 30.0}))

    async def older(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in NEWER_ROUTES:
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
            return
        await app(scope, receive, send)

    with TestClient(older, raise_server_exceptions=False) as client:
        yield client


def test_a_newer_worker_against_an_older_gateway_falls_back_route_by_route(
    older_client: TestClient, migrated: Any, tiny_engine: Any, tokens: Any, services: Any, owner_id: str,
    tmp_path: Path,
) -> None:
    _, plaintext = tokens.create("older-gateway")
    release = tmp_path / "release"
    settings = migrated.model_copy(update={"progress_interval_ms": 0, "worker_max_batch": 2,
                                           "worker_batching": "continuous"})
    jobs, runner = remote_runner(older_client, plaintext, "older:1", settings, tiny_engine,
                                 FaultInjector(hold_file=str(release), hold_after_steps=4))
    assert older_client.post("/v1/worker/cancels", headers=jobs.http.headers,
                             json={"worker": "older:1"}).status_code == 404
    sent = routes_sent(jobs)
    try:
        # Given two 16-step jobs running on the worker, held after four steps
        kept, canceled = (make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=1200 + i,
                                   steps=16, tag="older") for i in range(2))
        claims = jobs.claim(2, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
        assert sorted(c.job_id for c in claims) == sorted([kept.id, canceled.id])
        thread = threading.Thread(target=runner.run_claims, args=(claims,), daemon=True)
        thread.start()
        # Then its cancel polls found no route and stopped: nothing is trusted, the batch reads for itself
        hints = jobs.cancel_hints()
        wait_for(lambda: "cancels" in sent and not hints._thread.is_alive(), "the polls to give up")
        assert hints.trusted_since is None
        wait_for(lambda: (services.jobs.get(kept.id).progress_step or 0) >= 4, "four steps to be reported")
        # When the owner cancels one job
        before = len(sent)
        services.jobs.request_cancel(canceled.id, owner_id)
        wait_for(lambda: "cancel-requests" in sent[before:], "a read of cancel requests (the batch's own)")
        release.touch()
        thread.join(120)
        # Then it ends canceled and the other succeeds; progress went job by job after one 404
        assert services.jobs.get(canceled.id).status == "canceled"
        assert services.jobs.get(kept.id).status == "succeeded"
        assert sent.count("progress-many") == 1 and sent.count("progress") >= 2
    finally:
        release.touch()
        runner.drain()
