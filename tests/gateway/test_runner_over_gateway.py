"""The same `BatchRunner` (whole batches and continuous running sets) over the remote transport: jobs of all three kinds run through the gateway client
against the real app (in process), the tiny engine and the S3 server, and the gateway worker refuses to start
with direct credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import REPO
from tests.support.jobs import decode, make_job


@pytest.fixture(params=["whole", "continuous"])
def gateway_runner(client: TestClient, migrated: Any, tiny_engine: Any, make_token: Any,
                   request: pytest.FixtureRequest) -> Any:
    from workers.metrics import WorkerMetrics
    from workers.runner.continuous import runner_class
    from workers.shutdown import ShutdownGate
    from workers.transport.gateway_client import GatewayHttp, GatewayJobs, GatewayObjects

    _, headers = make_token(name="in-process")
    http = GatewayHttp("http://testserver", headers["Authorization"].split()[1], http=client)
    jobs = GatewayJobs(http, GatewayObjects(), "in-process:1")
    settings = migrated.model_copy(update={"progress_interval_ms": 0, "worker_max_batch": 8,
                                           "worker_batching": request.param})
    runner = runner_class(settings)(
        store=jobs, objects=jobs.objects, engine=tiny_engine, settings=settings,
        worker_id="in-process:1", metrics=WorkerMetrics(), shutdown=ShutdownGate(30.0), enqueue=lambda _: None,
    )
    return jobs, runner


def test_all_three_kinds_succeed_through_the_gateway(
    gateway_runner: Any, services: Any, owner_id: str, object_store: Any,
) -> None:
    # Given one queued job of each kind
    jobs, runner = gateway_runner
    made = [make_job(services.jobs, services.objects, owner_id, kind, 64, seed=3)
            for kind in ("generate", "edit", "understand")]
    # When the runner claims and runs batches over the gateway until they are all done
    for _ in range(6):
        claims = jobs.claim(8, 8 * 1024 * 1024, kinds=None, wait_seconds=0)
        if claims:
            runner.run_claims(claims)
        if all(services.jobs.get(j.id).terminal for j in made):
            break
    # Then each succeeded with a valid result in its own keys
    for job in made:
        done = services.jobs.get(job.id)
        assert done.status == "succeeded", (job.kind, done.error_code, done.error_message)
        assert all(key.startswith(f"results/{job.id}/") for key in done.result_keys)
        if job.kind == "understand":
            assert isinstance(done.result_text, str)
        else:
            assert decode(object_store, done.result_keys[0]).size == (64, 64)


def test_a_corrupted_upload_is_handed_back_not_completed(
    gateway_runner: Any, services: Any, owner_id: str,
) -> None:
    # Given a claimed job whose upload lands corrupted (a cut connection that delivered half the bytes)
    jobs, _ = gateway_runner
    job = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=5)
    claims = [c for c in jobs.claim(1, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0) if c.job_id == job.id]
    assert claims
    key = f"results/{job.id}/{claims[0].lease_token}/0.png"
    jobs.objects.put(key, b"\x89PNG\r\n\x1a\n half an image")
    # When the worker completes it
    ok = jobs.complete(claims[0], [key])
    # Then the server refuses it and the job is back in the queue, attempts unchanged, for any worker
    assert not ok
    back = services.jobs.get(job.id)
    assert back.status == "queued" and back.attempts == 0 and back.result_keys is None


@pytest.mark.parametrize("variable", ["UNIPIC_DATABASE_URL", "UNIPIC_BROKER_URL", "UNIPIC_STORAGE_URL",
                                      "AWS_SECRET_ACCESS_KEY"])
def test_gateway_worker_refuses_direct_credentials(variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIPIC_", "AWS_"))}
    env.update({variable: "postgresql://u:p@db/x", "PYTHONPATH": str(REPO)})
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--gateway", "https://api.example", "--token", "wk_x"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and "--gateway" in result.stderr
