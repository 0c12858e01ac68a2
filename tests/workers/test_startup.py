"""Load before consume: a model worker that cannot serve exits with one line and a documented code, having
taken no message; a healthy worker started later gets the job.

Real processes (`unipic worker` and `celery -A workers.gpu worker`) against the session's Postgres, Redis and
S3; the machine's torch has no CUDA, so `--device cuda` is the "no CUDA" case.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import redis

from tests.support import REPO
from tests.support.api import queued_job_ids
from tests.support.jobs import enqueue, make_job
from tests.support.waiting import wait_terminal
from workers.startup import ExitCode

EXIT_TIMEOUT = 60.0  # the bound for a worker that cannot start


def _unipic_worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "worker", *args]


def _celery_worker() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.gpu", "worker", "--pool", "solo", "--concurrency", "1",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=EXIT_TIMEOUT)


def _queued_with_its_message(job_store: Any, settings: Any, job: Any) -> None:
    """The job is untouched: still queued, attempts 0, its message still on the broker."""
    after = job_store.get(job.id)
    assert after.status == "queued" and after.attempts == 0 and after.worker_id is None
    client = redis.Redis.from_url(settings.broker_url)
    try:
        assert job.id in queued_job_ids(client, job.queue)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("argv", "extra_env", "code", "reason"),
    [
        (_unipic_worker("--model", "/nonexistent/unipic", "--device", "cpu"), {},
         ExitCode.MODEL_NOT_FOUND, "cannot find the model"),
        (_unipic_worker("--device", "cuda"), {}, ExitCode.NO_DEVICE, "device cuda is not available"),
        (_celery_worker(), {"UNIPIC_MODEL": "./nope"}, ExitCode.MODEL_NOT_FOUND, "cannot find the model"),
        (_celery_worker(), {"UNIPIC_WORKER_DEVICE": "cuda:0"}, ExitCode.NO_DEVICE, "cuda:0 is not available"),
    ],
    ids=["unipic-bad-path", "unipic-no-cuda", "celery-bad-path", "celery-no-cuda"],
)
def test_a_worker_that_cannot_serve_exits_with_one_line_and_eats_no_message(
    argv: list[str], extra_env: dict[str, str], code: ExitCode, reason: str, worker_env: dict[str, str],
    job_store: Any, object_store: Any, owner_id: str, celery_app: Any, settings: Any,
) -> None:
    # Given a queued job whose message waits on the broker
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=7, tag="startup")
    enqueue(job_store, celery_app, [job])

    # When a worker that cannot serve starts
    result = _run(argv, {**worker_env, **extra_env})

    # Then it exits with the documented code and one line saying what failed and what to do
    output = result.stdout + result.stderr
    assert result.returncode == int(code), output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and reason in errors[0] and f"(exit code {int(code)})" in errors[0], output[-3000:]
    assert "Traceback" not in output
    # And it took nothing: the job is queued, attempts 0, its message still on the broker
    _queued_with_its_message(job_store, settings, job)
    job_store.request_cancel(job.id, owner_id)  # leave no work for later tests


@pytest.mark.system
def test_a_healthy_worker_started_after_a_failed_one_gets_the_job(
    worker_env: dict[str, str], start_worker: Any, job_store: Any, object_store: Any, owner_id: str,
    celery_app: Any, settings: Any,
) -> None:
    # Given a queued job, and a worker that failed to start on a bad path
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=8, tag="startup-healthy")
    enqueue(job_store, celery_app, [job])
    failed = _run(_unipic_worker("--model", "/nonexistent/unipic"), worker_env)
    assert failed.returncode == int(ExitCode.MODEL_NOT_FOUND), failed.stderr[-3000:]
    _queued_with_its_message(job_store, settings, job)

    # When a healthy worker starts
    healthy = start_worker("healthy")

    # Then it runs the job on its first attempt
    done = wait_terminal(job_store, [job.id], workers=[healthy])[job.id]
    assert done.status == "succeeded" and done.attempts == 0
    assert done.worker_id is not None and done.worker_id.endswith(f":{healthy.pid}")
    # And before its first claim it froze what it held out of the garbage collector's full passes (torch, the
    # model, the stores: a full pass over them held the GIL for 0.24-0.52 s, `workers.startup.freeze_startup_heap`)
    frozen = re.search(r"(\d+) long-lived objects frozen", healthy.log())
    assert frozen is not None and int(frozen.group(1)) > 100_000, healthy.log()[-3000:]
