"""Progress reports and cancellation checks of a running batch, both throttled.

`ProgressReporter` is the engine's `progress(ids, step, total)` callback: it forwards step/total per job to the
store (which fans it out to the ephemeral layer for the API and SSE) at most every `interval` per job, and
always forwards the final step. `CancelWatcher` is the engine's `should_cancel()`: it asks the store which
jobs of the batch have a cancel request, at most every `interval`, and merges in the jobs the batch must drop
for its own reasons (lost leases, time limit, shutdown). Neither knows the model; errors here are logged and
never fail a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


class ProgressReporter:
    """Throttled per-job progress writes."""

    def __init__(
        self,
        store: Any,
        claims: Mapping[str, Any],
        interval_seconds: float,
        on_step: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._claims = claims
        self._interval = interval_seconds
        self._last: dict[str, float] = {}
        self._on_step = on_step
        self.fraction = 0.0  # of the current model call, for the shutdown estimate

    def reset(self) -> None:
        """A new model call starts (e.g. after an out-of-memory split)."""
        self.fraction = 0.0

    def __call__(self, ids: list[str], step: int, total: int) -> None:
        if self._on_step is not None:
            self._on_step()
        if total > 0:
            self.fraction = max(self.fraction, min(1.0, step / total))
        now = time.monotonic()
        for job_id in ids:
            due = now - self._last.get(job_id, float("-inf")) >= self._interval
            if not (due or step >= total) or job_id not in self._claims:
                continue
            self._last[job_id] = now
            try:
                self._store.set_progress(self._claims[job_id], step, total)
            except Exception:  # progress is best effort
                log.exception("progress update failed for job %s", job_id)


class CancelWatcher:
    """Which jobs of the batch to drop now: cancel requests (throttled) plus local reasons."""

    def __init__(
        self,
        store: Any,
        job_ids: Iterable[str],
        interval_seconds: float = 0.25,
        local: Callable[[], set[str]] = set,
    ) -> None:
        self._store = store
        self._ids = list(job_ids)
        self._interval = interval_seconds
        self._local = local
        self._requested: set[str] = set()
        self._checked = float("-inf")
        self._lock = threading.Lock()

    @property
    def requested(self) -> set[str]:
        """Jobs whose owner asked to cancel them (as of the last check)."""
        with self._lock:
            return set(self._requested)

    def __call__(self) -> set[str]:
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._checked = now
            pending = [j for j in self._ids if j not in self._requested]
            if pending:
                try:
                    found = set(self._store.cancel_requested_ids(pending))
                except Exception:
                    log.exception("cancel check failed for %s", pending)
                    found = set()
                with self._lock:
                    self._requested |= found
        with self._lock:
            return self._requested | self._local()
