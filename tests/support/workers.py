"""Model-worker processes for the tests, started exactly as in production and stopped at teardown.

`python -m celery -A workers.gpu worker --pool solo` with the session's services in its environment; a worker
is ready once it has registered itself in the `workers` table (after its model is loaded). Knows the worker's
command line and the registry; knows nothing of jobs or fixtures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

READY_TIMEOUT = 120.0  # a liveness bound, not a speed assertion


def celery_worker_argv(name: str) -> list[str]:
    """The production command line of a Celery model worker named `name`."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.gpu", "worker", "--pool", "solo", "--concurrency",
        "1", "--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ]


class WorkerProcess:
    """A model worker in its own process, with its log file: a Celery worker unless `argv` says otherwise (the
    gateway tests start `unipic worker --gateway ...`)."""

    transport = "direct"  # how it registers in the `workers` table
    ready_timeout = READY_TIMEOUT

    def __init__(self, env: dict[str, str], name: str, log_dir: Path, extra_env: dict[str, str] | None = None,
                 argv: list[str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.env = {**env, **(extra_env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv or celery_worker_argv(name), env=self.env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, registry: Any) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if any(w.pid == self.pid and w.transport == self.transport and w.stopped_at is None
                   for w in registry.all()):
                return
            time.sleep(0.2)
        pytest.fail(f"worker {self.name} not ready after {self.ready_timeout}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode


class WorkerStarter:
    """Starts worker processes and stops them all at teardown."""

    def __init__(self, env: dict[str, str], registry: Any, log_dir: Path, prefix: str) -> None:
        self.env, self.registry, self.log_dir, self.prefix = env, registry, log_dir, prefix
        self.started: list[WorkerProcess] = []

    def __call__(self, name: str, wait: bool = True, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(self.env, f"{self.prefix}{name}-{len(self.started)}", self.log_dir, extra_env)
        self.started.append(worker)
        if wait:
            worker.wait_ready(self.registry)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where worker logs go: $TEST_WORKER_LOGS (kept for a look afterwards), else a session temp dir."""
    kept = os.environ.get("TEST_WORKER_LOGS")
    directory = Path(kept) if kept else tmp_path_factory.mktemp("worker-logs")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
