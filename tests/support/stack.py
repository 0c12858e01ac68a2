"""A real `unipic up --model tiny` stack in embedded mode, shared by the CLI and status-page tests.

One stack per test session (started on first use; a test that stops it makes the next user start a fresh one),
on a free port with its own temporary `--data-dir`: SQLite, local objects and the SQLite broker, no external
service. Its output goes to a log file that failing tests print. `run_cli` runs `unipic ...` as a subprocess
against it, so every test drives the stack exactly as a user would.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import REPO

READY_TIMEOUT_S = 180.0
# 64 px keeps the tiny model quick on CPU; 2048 px goes to a queue (`.xl`) the test worker does not serve, so
# such a job stays queued for as long as a test needs
TEST_SIZES = "64,256,512,1024,2048"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a `unipic` subprocess: no inherited UNIPIC_* settings, offline hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIPIC_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def unipic_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


@dataclass
class Stack:
    """A running `unipic up` process and what it printed."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    url: str
    env: dict[str, str]
    key: str = ""
    extra_keys: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 120.0, key: str | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `unipic ARGS` against this stack (URL and key in the environment)."""
        env = dict(self.env, UNIPIC_API_URL=self.url, UNIPIC_API_KEY=self.key if key is None else key)
        return subprocess.run(unipic_argv(*args), env=env, cwd=cwd or REPO, capture_output=True, text=True, check=False,
                              timeout=timeout)

    def child_pids(self) -> dict[str, int]:
        """The pid of each child, as the supervisor logged it (the latest start wins)."""
        return {name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", self.log())}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_stack(tmp_root: Path, extra_env: dict[str, str] | None = None, key: str | None = None) -> Stack:
    """Start `unipic up --model tiny`, wait for /readyz and for a live worker; fail with the log otherwise.

    With no `extra_env` that is the embedded stack; UNIPIC_* URLs in `extra_env` make it the production path.
    `key`: an API key made beforehand (else the first key that `up` prints)."""
    data_dir = tmp_root / "data"
    log_path = tmp_root / "up.log"
    port = free_port()
    env = clean_env(UNIPIC_ALLOWED_SIZES=TEST_SIZES, UNIPIC_MODEL_DTYPE="float32",
                    UNIPIC_HEARTBEAT_SECONDS="2", UNIPIC_SWEEP_INTERVAL_SECONDS="2",
                    UNIPIC_API_SHUTDOWN_GRACE_SECONDS="2")  # a request held at a stop ends within 2 s, not `--grace`
    env.update(extra_env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            unipic_argv("up", "--model", "tiny", "--port", str(port), "--data-dir", str(data_dir),
                        "--device", "cpu", "--grace", "20"),
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack = Stack(proc, data_dir, log_path, f"http://127.0.0.1:{port}", env)
    _wait_ready(stack)
    match = re.search(r"UNIPIC_API_KEY=(upk_\S+)", stack.log())
    if key is None and not match:
        stack.stop()
        pytest.fail(f"`unipic up` printed no first API key:\n{stack.log()}", pytrace=False)
    stack.key = key or match.group(1)  # type: ignore[union-attr]
    _wait_worker(stack)
    return stack


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            pytest.fail(f"`unipic up` exited with {stack.proc.returncode}:\n{stack.log()}", pytrace=False)
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200 and "unipic is up" in stack.log():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stack.stop()
    pytest.fail(f"stack not ready in {READY_TIMEOUT_S:.0f} s:\n{stack.log()}", pytrace=False)


def _wait_worker(stack: Stack) -> None:
    """Wait until the model worker has registered (its model is loaded and it consumes)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    headers = {"Authorization": f"Bearer {stack.key}"}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{stack.url}/v1/workers", headers=headers, timeout=5)
        if answer.status_code == 200 and answer.json()["data"]:
            return
        if stack.proc.poll() is not None:
            break
        time.sleep(0.5)
    stack.stop()
    pytest.fail(f"no live model worker:\n{stack.log()}", pytrace=False)


class SharedStack:
    """The session's stack: started on first use, stopped at the end of the session."""

    _stack: Stack | None = None
    _tmp: Path | None = None
    _failure: str | None = None  # a stack that would not start fails its later users at once

    @classmethod
    def get(cls, config: pytest.Config) -> Stack:
        if cls._stack is not None and cls._stack.proc.poll() is None:
            return cls._stack
        if cls._failure is not None:
            pytest.fail(f"the shared stack did not start (see the first failure): {cls._failure}", pytrace=False)
        if cls._tmp is None:
            cls._tmp = Path(tempfile.mkdtemp(prefix="unipic-up-"))
            config.add_cleanup(cls._cleanup)
        run_dir = Path(tempfile.mkdtemp(dir=cls._tmp))
        try:
            cls._stack = start_stack(run_dir)
        except pytest.fail.Exception as exc:
            cls._failure = str(exc).splitlines()[0]
            raise
        return cls._stack

    @classmethod
    def _cleanup(cls) -> None:
        if cls._stack is not None:
            cls._stack.stop()
            for pid in cls._stack.child_pids().values():  # anything a failed stop left behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if cls._tmp is not None:
            shutil.rmtree(cls._tmp, ignore_errors=True)
        cls._stack, cls._tmp = None, None
