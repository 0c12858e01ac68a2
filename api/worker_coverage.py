"""What live model workers cover: the queues they serve (why a queued job waits: `no_worker_for_queue`) and
the models they hold (`api.intake.models`).

Owns the live workers as they advertise themselves (the `workers` table through `WorkerRegistry`, heartbeat
within three intervals), cached for `TTL_S` so reading a job costs at most one small query every few seconds,
and the job warnings derived from them. One instance per process lives in `api.services.Services`. It knows
nothing of HTTP or rendering.
"""

from __future__ import annotations

import threading
import time

from storage.fleet.registry import WorkerRecord, WorkerRegistry
from storage.records import JobRecord

TTL_S = 2.0
NO_WORKER_FOR_QUEUE = "no_worker_for_queue"


class QueueCoverage:
    """The queues live model workers serve, refreshed at most every `ttl_s`."""

    def __init__(self, registry: WorkerRegistry, stale_after_seconds: float, ttl_s: float = TTL_S) -> None:
        self._registry = registry
        self._stale_after = stale_after_seconds
        self.ttl = ttl_s  # seconds a read is reused (tests set 0)
        self._lock = threading.Lock()
        self._live: list[WorkerRecord] = []
        self._served: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at >= self.ttl:
            self._live = self._registry.live(self._stale_after)
            self._served = frozenset(q for w in self._live for q in w.queues)
            self._read_at = time.monotonic()

    def live(self) -> list[WorkerRecord]:
        """The live workers, oldest first."""
        with self._lock:
            self._refresh()
            return self._live

    def served(self) -> frozenset[str]:
        with self._lock:
            self._refresh()
            return self._served

    def unserved(self, queues: list[str]) -> list[str]:
        """Those of `queues` no live worker serves."""
        served = self.served()
        return [q for q in queues if q not in served]

    def warnings(self, job: JobRecord) -> list[str]:
        """`["no_worker_for_queue"]` for a queued job whose queue no live worker serves, else `[]`."""
        if job.status != "queued" or job.queue in self.served():
            return []
        return [NO_WORKER_FOR_QUEUE]

