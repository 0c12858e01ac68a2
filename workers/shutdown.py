"""Graceful shutdown of a model worker: finish the current batch if it can, otherwise hand it back.

On SIGTERM (Celery's warm shutdown) the worker keeps running its current batch while the batch looks able to
finish within the grace period (judged from its progress so far); otherwise it drops the batch at the next
sampling step and its jobs are released to `queued` (attempts unchanged) and re-enqueued, so a deploy loses
nothing. The gate is process-wide state set from the signal handler and read between sampling steps.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class ShutdownGate:
    """Remembers when shutdown was requested and decides whether the current batch should be abandoned."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._requested_at: float | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        with self._lock:
            if self._requested_at is None:
                self._requested_at = time.monotonic()
                log.warning("shutdown requested: finishing the current batch within %.0f s", self.grace_seconds)

    @property
    def requested(self) -> bool:
        return self._requested_at is not None

    def should_abandon(self, batch_started: float, fraction_done: float) -> bool:
        """True when the batch cannot finish within what is left of the grace period."""
        requested_at = self._requested_at
        if requested_at is None:
            return False
        now = time.monotonic()
        grace_left = requested_at + self.grace_seconds - now
        if grace_left <= 0:
            return True
        if fraction_done <= 0:
            return False  # no evidence yet; wait for progress or for the grace period to run out
        remaining = (now - batch_started) * (1 - fraction_done) / fraction_done
        return remaining > grace_left
