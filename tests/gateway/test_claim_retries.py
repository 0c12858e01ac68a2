"""A claim whose answer was lost is retried by the real gateway client and gets the same jobs: the first send says
`first_try` (the gateway does not look its claim id up: an idle claim costs the database nothing), the retries
do not (the gateway finds what the first send took). The API is served over loopback behind a cutting proxy."""

from __future__ import annotations

from typing import Any

from tests.gateway.served import Gateway
from tests.support.jobs import make_job


def test_a_claim_whose_answer_was_dropped_is_retried_and_gets_the_same_job(gateway: Gateway, owner_id: str) -> None:
    from storage.fleet.tokens import WorkerTokenStore
    from workers.transport.gateway_client import GatewayHttp, GatewayJobs, GatewayObjects

    # Given one queued job and the real gateway client, whose first claim answer the proxy drops
    services = gateway.services
    _, token = WorkerTokenStore(services.jobs.sessions).create("claim-retries", kinds=["generate"])
    jobs = GatewayJobs(GatewayHttp(gateway.url, token, pauses=(0.05, 0.1, 0.2)), GatewayObjects(), "retries:1")
    job = make_job(services.jobs, services.objects, owner_id, "generate", 64, seed=3, steps=2)
    gateway.api_proxy.drop_response(b"POST /v1/worker/claim")
    try:
        # When it claims
        claims = jobs.claim(4, 8 * 1024 * 1024, kinds=["generate"], wait_seconds=0)
    finally:
        jobs.http.close()
        jobs.objects.close()
    # Then the answer was dropped once, and the retry got the job the first send took, under that same lease
    assert gateway.api_proxy.responses_dropped == 1
    running: Any = services.jobs.get(job.id)
    assert [(c.job_id, c.lease_token) for c in claims] == [(job.id, running.lease_token)]
    assert running.status == "running" and running.attempts == 0
