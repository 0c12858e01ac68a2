"""Finishing pipeline: a batch's encode + upload + complete run in the background while the next batch samples.

Owns one background thread and the bound of one batch in flight (issue 20, item 3): `submit(finish)` first
waits for the previous batch's finishing, then hands `finish` to the thread and returns, so the model starts
the next batch at once and a slow upload never piles up more than one batch of results in memory. `drain()`
waits for the batch in flight (before the worker exits or hands work back); `enabled=False` runs `finish`
inline, which is the old serial behaviour (its errors reach the caller). In the background a failure inside
`finish` is logged and never reaches the model loop: the finishing code settles each item itself (fencing and
per-item failures are unchanged, they live in `workers.runner.batching`), and a job it could not settle comes back
through its lease, as after a crash. It knows nothing of jobs, models or stores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class FinishPipeline:
    """At most one batch's finishing in flight beside the model."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish-batch") if enabled else None
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()
        self.wait_seconds = 0.0  # time the model loop spent waiting for a previous batch's finishing

    def submit(self, finish: Callable[[], None]) -> None:
        """Run `finish` after the previous one, in the background (inline when disabled)."""
        if self._executor is None:  # the serial path: errors reach the caller, as before pipelining
            finish()
            return
        with self._lock:
            self._wait_pending()
            self._pending = self._executor.submit(_guarded, finish)

    def drain(self) -> None:
        """Wait until the batch in flight (if any) is finished."""
        with self._lock:
            self._wait_pending()

    def close(self) -> None:
        self.drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _wait_pending(self) -> None:
        if self._pending is not None:
            started = time.perf_counter()
            self._pending.result()
            self.wait_seconds += time.perf_counter() - started
            self._pending = None


def _guarded(finish: Callable[[], None]) -> None:
    try:
        finish()
    except Exception:  # the finishing code settles its items; anything else is only logged
        log.exception("finishing a batch failed")
