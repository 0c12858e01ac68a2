"""A gateway worker that finished a result before its connection was cut reports it once the path is back,
instead of computing it again: the upload and `complete` are retried while the lease holds (renewals go on
meanwhile), and given up as soon as the lease cannot be proven.

The batch runner runs in process with the tiny engine and speaks real HTTP, through cutting proxies, to the API
served over loopback and to the S3 server (tests.gateway.served). Model runs are counted on the worker side: the
runner's batches and its metrics' batch count.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from storage.records import Claim
from tests.gateway.served import Gateway
from tests.support.jobs import decode, make_job

SHORT_PAUSES = (0.05, 0.1, 0.2)  # the gateway client's own retries, so each call gives up within a lease


@dataclass
class RemoteWorker:
    jobs: Any
    runner: Any
    metrics: Any

    def claim(self, job_id: str) -> list[Claim]:
        claims = self.jobs.claim(4, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
        assert [c.job_id for c in claims] == [job_id]
        return claims

    def run_in_background(self, claims: list[Claim]) -> threading.Thread:
        thread = threading.Thread(target=self.runner.run_claims, args=(claims,), daemon=True)
        thread.start()
        return thread

    @property
    def model_runs(self) -> int:
        """Batches the worker ran (its own count and its metrics' batch-size observations agree)."""
        observed = sum(s.value for m in self.metrics.batch_size.collect() for s in m.samples
                       if s.name.endswith("_count"))
        assert observed == self.runner.batches_served
        return int(self.runner.batches_served)


@pytest.fixture
def remote(gateway: Gateway, tiny_engine: Any) -> Iterator[RemoteWorker]:
    """An in-process gateway worker (whole batches) reaching the API and the bucket only through the proxies."""
    from storage.fleet.tokens import WorkerTokenStore
    from workers.metrics import WorkerMetrics
    from workers.runner.batching import BatchRunner
    from workers.shutdown import ShutdownGate
    from workers.transport.gateway_client import GatewayHttp, GatewayJobs, GatewayObjects

    _, token = WorkerTokenStore(gateway.services.jobs.sessions).create("retries")
    jobs = GatewayJobs(GatewayHttp(gateway.url, token, pauses=SHORT_PAUSES), GatewayObjects(), "retries:1")
    settings = gateway.services.settings.model_copy(update={"progress_interval_ms": 0, "worker_batching": "whole"})
    metrics = WorkerMetrics()
    runner = BatchRunner(store=jobs, objects=jobs.objects, engine=tiny_engine, settings=settings,
                         worker_id="retries:1", metrics=metrics, shutdown=ShutdownGate(30.0), enqueue=lambda _: None)
    yield RemoteWorker(jobs, runner, metrics)
    gateway.s3_proxy.up()
    gateway.api_proxy.up()
    runner.drain()  # its cancel long-poll ends
    jobs.http.close()
    jobs.objects.close()


def _job(gateway: Gateway, owner_id: str, seed: int) -> Any:
    return make_job(gateway.services.jobs, gateway.services.objects, owner_id, "generate", 64, seed=seed, steps=2)


def test_an_upload_cut_by_an_outage_is_retried_while_the_lease_holds_not_recomputed(
    gateway: Gateway, remote: RemoteWorker, owner_id: str, object_store: Any,
) -> None:
    # Given a claimed job, and the path to the bucket that breaks mid-upload of its finished result and stays down
    job = _job(gateway, owner_id, seed=41)
    claims = remote.claim(job.id)
    gateway.s3_proxy.cut_request(b"PUT ", outage=True)
    refused = gateway.s3_proxy.refused
    runner = remote.run_in_background(claims)
    # When the worker's upload has failed more times than a fixed retry budget allowed (3 retries), and only
    # then the path comes back (the lease was renewed meanwhile over the API path)
    assert gateway.s3_proxy.wait_refused(refused + 4, timeout=60), "the worker gave its finished result up"
    gateway.s3_proxy.up()
    runner.join(timeout=120)
    # Then the job succeeded from that one model run, under the lease that ran it, with no attempt spent
    done = gateway.services.jobs.get(job.id)
    assert done.status == "succeeded", (done.status, done.error_code)
    assert remote.model_runs == 1 and done.attempts == 0
    assert all(k.startswith(f"results/{job.id}/{claims[0].lease_token}/") for k in done.result_keys)
    assert object_store.page(f"results/{job.id}/") == sorted(done.result_keys)
    assert decode(object_store, done.result_keys[0]).size == (64, 64)


def test_a_complete_cut_past_the_clients_retries_is_retried_while_the_lease_holds(
    gateway: Gateway, remote: RemoteWorker, owner_id: str,
) -> None:
    # Given a claimed job whose `complete` requests are cut more often than one gateway call retries
    # (renewals pass: only the path of that request breaks)
    job = _job(gateway, owner_id, seed=42)
    claims = remote.claim(job.id)
    cuts = len(SHORT_PAUSES) + 2
    cut_before = gateway.api_proxy.connections_cut
    gateway.api_proxy.cut_request(b"POST /v1/worker/complete", times=cuts)
    # When the worker runs it
    remote.run_in_background(claims).join(timeout=120)
    # Then every cut happened, and the job succeeded from its one model run
    done = gateway.services.jobs.get(job.id)
    assert gateway.api_proxy.connections_cut - cut_before == cuts
    assert done.status == "succeeded", (done.status, done.error_code)
    assert remote.model_runs == 1 and done.attempts == 0


def test_a_worker_that_cannot_prove_its_lease_stops_writing(
    gateway: Gateway, remote: RemoteWorker, owner_id: str, object_store: Any,
) -> None:
    # Given a claimed job, and both paths (API and bucket) down from the first upload of its finished result on
    job = _job(gateway, owner_id, seed=43)
    claims = remote.claim(job.id)
    gateway.s3_proxy.cut_request(b"PUT ", outage=True)
    runner = remote.run_in_background(claims)
    assert gateway.s3_proxy.cut_done.wait(60)
    gateway.api_proxy.down()  # renewals now fail: the lease can no longer be proven
    # When the worker notices (its next renewal fails), it gives the job up while both paths are still down
    runner.join(timeout=60)
    assert not runner.is_alive(), "the worker kept retrying a lease it could not prove"
    attempts = gateway.s3_proxy.refused
    gateway.s3_proxy.up()
    gateway.api_proxy.up()
    # Then it wrote nothing and completed nothing: the job is still running under that lease, to expire
    assert object_store.page(f"results/{job.id}/") == []
    assert gateway.services.jobs.get(job.id).status == "running"
    assert gateway.s3_proxy.refused == attempts and remote.model_runs == 1
