"""A real webhook worker (`celery -A workers.cpu worker -B`) SIGKILLed mid-delivery loses no event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from storage.tables import WebhookEvent
from tests.support import REPO
from tests.support.webhooks import JobDriver, Receiver

pytestmark = pytest.mark.system  # starts webhook-worker processes

TIMEOUT_SECONDS = 2.0  # worker's webhook timeout: the lease is 2 * 2 + 5 = 9 s


class WebhookWorker:
    """One `celery -A workers.cpu worker` process group, logging to a file."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.log_path = workdir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.cpu", "worker", "-Q", "unipic.maintenance",
             "-B", "--pool", "threads", "--concurrency", "2", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--schedule", str(workdir / f"{name}-beat"), "-n", f"{name}@%h"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the worker and its beat child: no shutdown code runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = dict(settings_env)
    env["UNIPIC_WEBHOOK_TIMEOUT_SECONDS"] = str(TIMEOUT_SECONDS)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[list[WebhookWorker]]:
    started: list[WebhookWorker] = []
    yield started
    for w in started:
        w.kill()


def test_sigkill_mid_delivery_loses_no_event(
    receiver: Receiver, jobs: JobDriver, session_factory: Any, worker_env: dict[str, str], tmp_path: Path,
    workers: list[WebhookWorker],
) -> None:
    # Given a receiver that holds the first request open, and a running webhook worker
    receiver.hold()
    first = WebhookWorker(worker_env, tmp_path, "wh1")
    workers.append(first)
    job = jobs.create(receiver.url + "/kill", ["job.succeeded"])
    jobs.succeed(job)
    assert receiver.wait_held(60), "the worker never delivered:\n" + first.tail()
    # When the worker is SIGKILLed while the request is in flight
    first.kill()
    receiver.release()
    with session_factory() as s:
        event = s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job.id)).one()
    assert event.status == "pending" and event.attempts == 1
    # Then a restarted worker delivers it once the lease runs out, with the same webhook-id
    second = WebhookWorker(worker_env, tmp_path, "wh2")
    workers.append(second)
    got = receiver.wait_for(2, timeout=60)
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == event.id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with session_factory() as s:
            status = s.get(WebhookEvent, event.id).status
        if status == "delivered":
            break
        time.sleep(0.2)
    assert status == "delivered", second.tail()
