"""An in-process gateway worker for the gateway tests: `GatewayJobs` over a TestClient (the real app, no network),
the runner the settings choose (`workers.runner.continuous.runner_class`) on it, and a record of the worker
routes a client posts to (what a test asserts about requests made)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def remote_jobs(client: TestClient, token: str, name: str) -> Any:
    """`GatewayJobs` named `name`, reaching the app behind `client` with the worker token `token`."""
    from workers.transport.gateway_client import GatewayHttp, GatewayJobs, GatewayObjects

    return GatewayJobs(GatewayHttp("http://testserver", token, http=client), GatewayObjects(), name)


def remote_runner(client: TestClient, token: str, name: str, settings: Any, engine: Any,
                  faults: Any = None) -> tuple[Any, Any]:
    """(`GatewayJobs`, the runner `settings` choose) of an in-process gateway worker named `name`."""
    from workers.metrics import WorkerMetrics
    from workers.runner.continuous import runner_class
    from workers.shutdown import ShutdownGate

    jobs = remote_jobs(client, token, name)
    runner = runner_class(settings)(
        store=jobs, objects=jobs.objects, engine=engine, settings=settings, worker_id=name,
        metrics=WorkerMetrics(), shutdown=ShutdownGate(30.0), enqueue=lambda _: None, faults=faults,
    )
    return jobs, runner


def routes_sent(jobs: Any) -> list[str]:
    """The worker routes `jobs` posts to from now on, in order (its HTTP posts are observed, not changed)."""
    sent: list[str] = []
    post = jobs.http.post

    def counted(path: str, body: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(path)
        return post(path, body, *args, **kwargs)

    jobs.http.post = counted
    return sent
