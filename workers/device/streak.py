"""A model worker's run of consecutive failed messages, and the back-off it takes after too many.

A message "fails" when every model call it made failed (and none succeeded); one success ends the run. After
`threshold` failures in a row the worker pauses before taking its next message, doubling the pause each time up
to `max_seconds`, and says so in its heartbeat record (`snapshot()`): a box that keeps failing items without an
identifiable device error slows down instead of eating a share of every queue.

It knows nothing of Celery, jobs or the database; the runtime feeds it and the heartbeat reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

THRESHOLD = 3
BASE_SECONDS = 2.0
MAX_SECONDS = 60.0


class FailureStreak:
    """Counts consecutive failed messages; `pause()` backs off once the run reaches `threshold`."""

    def __init__(self, threshold: int = THRESHOLD, base_seconds: float = BASE_SECONDS,
                 max_seconds: float = MAX_SECONDS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.threshold, self.base_seconds, self.max_seconds = threshold, base_seconds, max_seconds
        self._sleep = sleep
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error: str | None = None
        self.backoff_until: datetime | None = None

    def record(self, ok_calls: int, failed_calls: int, error: str | None) -> None:
        """One message's outcome, as the number of model calls that succeeded and failed."""
        with self._lock:
            if ok_calls:
                self.failures, self.backoff_until = 0, None
            elif failed_calls:
                self.failures += 1
                self.last_error = error

    def backoff_seconds(self) -> float:
        with self._lock:
            if self.failures < self.threshold:
                return 0.0
            return float(min(self.base_seconds * 2.0 ** (self.failures - self.threshold), self.max_seconds))

    def pause(self) -> float:
        """Back off before the next message when the run is long enough; returns the seconds paused."""
        seconds = self.backoff_seconds()
        if seconds:
            with self._lock:
                self.backoff_until = datetime.now(UTC) + timedelta(seconds=seconds)
            log.warning("%d failed messages in a row (last: %s): backing off %.0f s", self.failures,
                        self.last_error, seconds)
            self._sleep(seconds)
        return seconds

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat record shows."""
        with self._lock:
            return {
                "consecutive_failures": self.failures,
                "backing_off": self.failures >= self.threshold,
                "backoff_until": self.backoff_until.isoformat() if self.backoff_until else None,
                "last_error": (self.last_error or "")[:500] or None,
            }
