"""Waiting on states, never on time: poll a predicate or the jobs' rows until they hold, with a liveness bound.

The bounds are liveness limits, not speed assertions: a broken worker fails the test instead of hanging it.
Knows `JobStore.get_many` and that a worker process can show its log; nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pytest

DONE_TIMEOUT = 150.0


class HasLog(Protocol):
    name: str

    def log(self) -> str: ...


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DONE_TIMEOUT) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_terminal(store: Any, ids: list[str], timeout: float = DONE_TIMEOUT,
                  workers: Iterable[HasLog] = ()) -> dict[str, Any]:
    """Poll until every job is terminal; fail with the worker logs if that does not happen."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j.id: j for j in store.get_many(ids)}
        if all(j.terminal for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            pending = {j.id: j.status for j in jobs.values() if not j.terminal}
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"jobs not terminal after {timeout}s: {pending}\n{logs}")
        time.sleep(0.2)
