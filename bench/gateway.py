"""The gateway path of `bench.worker`: the same jobs through a remote worker (`unipic worker --gateway`) over
loopback HTTP, measured the same way as the Celery path, in the same run.

`GatewayPath(stack)` starts the API (`uvicorn --factory api.app:create_app_from_env`, the stack's settings) and a
gateway worker whose environment has no database, broker or storage settings (only the model and a worker
token), and waits for it to register with transport "remote". Jobs are then created queued with no Celery
message (a gateway worker claims by long-polling the API, not from the broker). Per job, besides the total
overhead (finished - submitted - model), it reports the claim-to-done overhead (finished - started - model): the
per-batch cost of the transport itself (renew, input GET, result PUT, complete with its object checks), which
excludes the long-poll's wake-up delay (`api.gateway.routes.POLL_SECONDS`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class GatewayPath:
    """An API server and a gateway worker, started beside a `bench.worker.Stack` (whose procs stop them)."""

    def __init__(self, stack: Any, port: int) -> None:
        self.stack, self.port = stack, port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, sessions: Any, timeout: float = 300, events_mode: str = "push") -> None:
        from storage.fleet.registry import WorkerRegistry
        from storage.fleet.tokens import WorkerTokenStore

        api = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app_from_env", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning"]
        self._spawn(api, {**self.stack.env(), "UNIPIC_EVENTS_MODE": events_mode}, "api.log")
        _, token = WorkerTokenStore(sessions).create("bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIPIC_", "AWS_"))}
        env.update(UNIPIC_MODEL="tiny", UNIPIC_MODEL_DTYPE="float32", UNIPIC_PROGRESS_INTERVAL_MS="250",
                   HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self._wait_api(timeout)
        worker = [sys.executable, "-m", "cli.main", "worker", "--gateway", self.url, "--token", token,
                  "--device", "cpu", "--name", "bench-gateway", "--loglevel", "WARNING"]
        self._spawn(worker, env, "gateway.log")
        registry = WorkerRegistry(sessions)
        deadline = time.monotonic() + timeout
        while not any(w.transport == "remote" for w in registry.live(60)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.stack.procs[-2:]):
                raise SystemExit(f"gateway worker did not start; see {self.stack.tmp}")
            time.sleep(0.2)

    def worker_requests(self) -> dict[str, float]:
        """Requests the API has answered so far per worker-gateway route (its `unipic_http_requests` counter)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=10).text):
            for sample in family.samples:
                route = sample.labels.get("route", "")
                if sample.name == "unipic_http_requests_total" and route.startswith("/v1/worker/"):
                    counts[route] = counts.get(route, 0) + sample.value
        return counts

    def _spawn(self, cmd: list[str], env: dict[str, str], log: str) -> None:
        out = open(self.stack.tmp / log, "wb")  # noqa: SIM115 - lives as long as the process
        self.stack.procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))

    def _wait_api(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the API did not start; see {self.stack.tmp}/api.log")

