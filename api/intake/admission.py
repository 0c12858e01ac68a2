"""Admission control: who may submit now, and how much.

Three checks, cheapest first: the per-key request rate (a window counter in the ephemeral store, Redis in
production; it fails open, since Redis holds no truth) answers 429 `rate_limited`; the key's queued+running jobs against its quota answer 429
`quota_exceeded`; the global queue depth against `max_queue_depth` answers 503 `overloaded`. All carry
`Retry-After`. Counts come from Postgres but are cached for about a second per process (plus what this process
admitted since), so a burst of submissions costs one count query per second, not one per request; the bound may
be overshot by at most one second of admissions per process, which is what a backpressure limit can afford.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from api.errors import retry_later
from storage.ephemeral import Ephemeral
from storage.jobs.store import JobStore
from storage.settings import Settings

log = logging.getLogger(__name__)

COUNT_TTL_SECONDS = 1.0
QUOTA_RETRY_AFTER = 5
OVERLOAD_RETRY_AFTER = 5
RATE_WINDOW_SECONDS = 60


class _CachedCount:
    """A count read at most every `ttl` seconds, plus local admissions since the read."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.value = 0
        self.read_at = float("-inf")

    def current(self, read: Callable[[], int]) -> int:
        now = time.monotonic()
        if now - self.read_at >= self.ttl:
            self.value = int(read())
            self.read_at = now
        return self.value


class Admission:
    """Rate limit, per-key quota and global backpressure."""

    def __init__(self, settings: Settings, jobs: JobStore, ephemeral: Ephemeral) -> None:
        self.settings = settings
        self.jobs = jobs
        self.ephemeral = ephemeral
        self._lock = threading.Lock()
        self._depth = _CachedCount(COUNT_TTL_SECONDS)
        self._owners: dict[str, _CachedCount] = {}

    def check_rate(self, key_id: str, per_minute: int | None = None) -> None:
        """One request by this key; 429 `rate_limited` with Retry-After when over its per-minute budget."""
        limit = per_minute or self.settings.rate_limit_per_minute
        try:
            retry_after = self.ephemeral.hit(f"api:{key_id}", limit, RATE_WINDOW_SECONDS)
        except Exception as exc:  # noqa: BLE001 - fail open: Redis holds no truth, Postgres still takes jobs
            log.warning("rate limit store unavailable for key %s, admitting: %s", key_id, exc)
            return
        if retry_after is not None:
            raise retry_later(429, "rate_limited", f"more than {limit} requests per minute", retry_after)

    def admit(self, owner_id: str, n: int, max_active: int | None = None) -> None:
        """Reserve room for `n` new jobs, or raise 429 `quota_exceeded` / 503 `overloaded`."""
        quota = max_active or self.settings.max_active_jobs_per_key
        with self._lock:
            owner = self._owners.get(owner_id)
            if owner is None:
                if len(self._owners) > 10_000:
                    self._owners.clear()
                owner = self._owners[owner_id] = _CachedCount(COUNT_TTL_SECONDS)
        active = owner.current(lambda: self.jobs.active_count(owner_id))
        if active + n > quota:
            raise retry_later(
                429, "quota_exceeded", f"{active} jobs queued or running; this key may have {quota}",
                QUOTA_RETRY_AFTER,
            )
        depth = self._depth.current(lambda: self.jobs.active_count(None))
        if depth + n > self.settings.max_queue_depth:
            log.warning("overloaded: queue depth %d + %d over %d", depth, n, self.settings.max_queue_depth)
            raise retry_later(503, "overloaded", "the queue is full; retry later", OVERLOAD_RETRY_AFTER)
        with self._lock:
            owner.value += n
            self._depth.value += n

    def queue_depth(self) -> int:
        """The cached global count of queued and running jobs (for /metrics)."""
        return self._depth.current(lambda: self.jobs.active_count(None))
