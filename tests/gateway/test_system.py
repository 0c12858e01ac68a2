"""System tests of the remote transport: a real `unipic worker --gateway URL --token wk_...` process with no
database, broker or storage settings in its environment, against the real API served over loopback HTTP (with
a proxy we control in front of the API and of the S3 server), next to a real Celery worker.

Leases are short on the API side (the gateway grants them), so a killed gateway worker's jobs come back through
the ordinary lease sweep (`Sweeper.sweep`, driven here) and finish on the Celery worker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.served import Gateway
from tests.support import REPO
from tests.support.jobs import decode, enqueue, make_job
from tests.support.waiting import wait_for, wait_terminal
from tests.support.workers import WorkerProcess, WorkerStarter, log_dir

pytestmark = pytest.mark.system


def gateway_worker_env(checkpoint: Path, **extra: str) -> dict[str, str]:
    """Only the model settings: no database, broker or storage settings, no S3 credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNIPIC_", "AWS_"))}
    env.update(UNIPIC_MODEL=str(checkpoint), UNIPIC_MODEL_DTYPE="float32", UNIPIC_HEARTBEAT_SECONDS="1",
               UNIPIC_PROGRESS_INTERVAL_MS="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)
    return env


class GatewayWorkerProcess(WorkerProcess):
    """`unipic worker --gateway ... --token ...` with only the model settings in its environment."""

    transport = "remote"
    ready_timeout = 180.0

    def __init__(self, url: str, token: str, checkpoint: Path, logs: Path, name: str, **extra: str) -> None:
        argv = [sys.executable, "-m", "cli.main", "worker", "--gateway", url, "--token", token, "--device", "cpu",
                "--name", name, "--max-batch", "4"]
        super().__init__(gateway_worker_env(checkpoint, **extra), name, logs, argv=argv)


@pytest.fixture
def start_gateway_worker(gateway: Gateway, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
                         registry: Any, tokens_for_system: Any) -> Iterator[Any]:
    started: list[GatewayWorkerProcess] = []

    def start(name: str, token: str | None = None, **extra: str) -> GatewayWorkerProcess:
        token = token or tokens_for_system()[1]
        worker = GatewayWorkerProcess(gateway.url, token, tiny_checkpoint, log_dir(tmp_path_factory),
                                      f"gw-{name}-{len(started)}", **extra)
        started.append(worker)
        worker.wait_ready(registry)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def tokens_for_system(gateway: Gateway) -> Any:
    from storage.fleet.tokens import WorkerTokenStore

    store = WorkerTokenStore(gateway.services.jobs.sessions)
    return lambda: store.create("system-test")


def _jobs(gateway: Gateway, owner_id: str, kinds: tuple[str, ...], seed: int = 0) -> list[Any]:
    services = gateway.services
    return [make_job(services.jobs, services.objects, owner_id, kind, 64, seed=seed + i, steps=2)
            for i, kind in enumerate(kinds)]


def _assert_intact(gateway: Gateway, object_store: Any, jobs: dict[str, Any]) -> None:
    """Every job succeeded once, with exactly its own result objects, each of which decodes."""
    for job in jobs.values():
        assert job.status == "succeeded", (job.id, job.error_code, job.error_message)
        assert object_store.page(f"results/{job.id}/") == sorted(job.result_keys)
        if job.kind == "understand":
            assert job.result_text is not None
        else:
            assert decode(object_store, job.result_keys[0]).size == (64, 64)


def test_gateway_worker_runs_all_kinds_next_to_a_celery_worker(
    gateway: Gateway, start_gateway_worker: Any, start_worker: WorkerStarter, celery_app: Any, owner_id: str,
    object_store: Any, registry: Any,
) -> None:
    # Given a gateway worker whose environment has no database, broker or storage settings
    remote = start_gateway_worker("all-kinds")
    assert not any(k in remote.env for k in ("UNIPIC_DATABASE_URL", "UNIPIC_BROKER_URL", "UNIPIC_STORAGE_URL",
                                              "AWS_ACCESS_KEY_ID"))
    # When jobs of all three kinds are queued (with their Celery messages, which no Celery worker takes yet)
    first = _jobs(gateway, owner_id, ("generate", "edit", "understand"))
    enqueue(gateway.services.jobs, celery_app, first)
    done = wait_terminal(gateway.services.jobs, [j.id for j in first], workers=[remote])
    # Then the gateway worker ran them all
    _assert_intact(gateway, object_store, done)
    assert all(j.worker_id.startswith("remote-") for j in done.values())
    # And next to a Celery worker, a mixed fleet finishes everything once
    direct = start_worker("direct")
    more = _jobs(gateway, owner_id, ("generate", "edit", "understand") * 3, seed=10)
    enqueue(gateway.services.jobs, celery_app, more)
    done = wait_terminal(gateway.services.jobs, [j.id for j in more], workers=[remote, direct])
    _assert_intact(gateway, object_store, done)
    live = {w.id: w for w in registry.live(30)}
    assert any(w.transport == "remote" for w in live.values()) and any(w.transport == "direct" for w in live.values())


def test_sigkill_mid_batch_requeues_and_finishes_elsewhere(
    gateway: Gateway, start_gateway_worker: Any, start_worker: WorkerStarter, celery_app: Any, owner_id: str,
    object_store: Any, tmp_path: Path,
) -> None:
    from workers.sweeper import Sweeper

    # Given a gateway worker holding a batch: its file gate (never released) holds it after its first step, so the
    # batch is still running when the kill lands (with slow steps only, it could finish between the wait and the
    # kill on a loaded machine, and a held job would have succeeded on the gateway worker)
    remote = start_gateway_worker("killed", UNIPIC_FAULT_HOLD_FILE=str(tmp_path / "never-released"))
    jobs = _jobs(gateway, owner_id, ("generate",) * 3, seed=20)
    services = gateway.services
    wait_for(lambda: any(j.status == "running" and (j.progress_step or 0) >= 1
                         for j in services.jobs.get_many([j.id for j in jobs])), "the gateway worker to be mid-batch")
    held = [j.id for j in services.jobs.get_many([j.id for j in jobs]) if j.status == "running"]
    # When it is SIGKILLed mid-batch, and a Celery worker is there
    remote.kill()
    direct = start_worker("rescue")
    sweeper = Sweeper.from_settings(services.settings, celery_app)

    def settled() -> bool:
        sweeper.sweep()  # lease expiry: the killed worker's jobs go back to the queue with a fresh message
        return all(j.terminal for j in services.jobs.get_many([j.id for j in jobs]))

    enqueue(services.jobs, celery_app, [j for j in services.jobs.get_many([j.id for j in jobs])
                                        if j.status == "queued"])
    wait_for(settled, "every job to finish", timeout=180)
    # Then none is lost or duplicated: each succeeded once, with exactly its own results
    done = {j.id: j for j in services.jobs.get_many([j.id for j in jobs])}
    _assert_intact(gateway, object_store, done)
    assert held and all(done[j].attempts >= 1 and not done[j].worker_id.startswith("remote-") for j in held)
    assert direct.proc.poll() is None


def test_connection_cut_mid_upload_and_lost_complete_answer_keep_results_intact(
    gateway: Gateway, start_gateway_worker: Any, celery_app: Any, owner_id: str, object_store: Any,
) -> None:
    # Given a gateway worker, and the proxies armed to cut an upload mid-body and drop one complete's answer
    remote = start_gateway_worker("cut")
    gateway.s3_proxy.cut_request(b"PUT ")
    gateway.api_proxy.drop_response(b"POST /v1/worker/complete")
    # When it runs jobs
    jobs = _jobs(gateway, owner_id, ("generate", "generate", "understand"), seed=30)
    done = wait_terminal(gateway.services.jobs, [j.id for j in jobs], workers=[remote])
    # Then both faults happened, and every job succeeded once with intact results
    assert gateway.s3_proxy.cut_done.is_set() and gateway.api_proxy.drop_done.is_set()
    _assert_intact(gateway, object_store, done)


def test_revoked_token_stops_the_worker_with_401(
    gateway: Gateway, start_gateway_worker: Any, tokens_for_system: Any,
) -> None:
    from storage.fleet.tokens import WorkerTokenStore

    # Given a running gateway worker
    record, token = tokens_for_system()
    remote = start_gateway_worker("revoked", token=token)
    # When its token is revoked
    WorkerTokenStore(gateway.services.jobs.sessions).revoke(record.id)
    # Then its next call is refused (401) and it stops with BAD_SETTINGS
    wait_for(lambda: remote.proc.poll() is not None, "the revoked worker to exit", timeout=60)
    assert remote.proc.returncode == 2
    assert "401" in remote.log() or "revoked" in remote.log()
