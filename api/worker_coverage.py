"""Why a queued job waits: whether any live model worker serves its queue (`no_worker_for_queue`).

Owns the set of queues that live workers advertise (the `workers` table through `WorkerRegistry`, heartbeat
within three intervals), cached for `TTL_S` per database so reading a job costs at most one small query every
few seconds, and the job warnings derived from it. It knows nothing of HTTP or rendering.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from weakref import WeakKeyDictionary

from storage.records import JobRecord
from storage.workers_registry import WorkerRegistry

TTL_S = 2.0
NO_WORKER_FOR_QUEUE = "no_worker_for_queue"


class QueueCoverage:
    """The queues live model workers serve, refreshed at most every `ttl_s`."""

    def __init__(self, sessions: Any, stale_after_seconds: float, ttl_s: float = TTL_S) -> None:
        self._registry = WorkerRegistry(sessions)
        self._stale_after = stale_after_seconds
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._served: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def served(self) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl:
                live = self._registry.live(self._stale_after)
                self._served = frozenset(q for w in live for q in w.queues)
                self._read_at = time.monotonic()
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


_BY_SESSIONS: WeakKeyDictionary[Any, QueueCoverage] = WeakKeyDictionary()
_GUARD = threading.Lock()


def coverage_for(sessions: Any, heartbeat_seconds: float) -> QueueCoverage:
    """The shared `QueueCoverage` of one database (one per session factory)."""
    with _GUARD:
        found = _BY_SESSIONS.get(sessions)
        if found is None:
            found = _BY_SESSIONS[sessions] = QueueCoverage(sessions, 3 * heartbeat_seconds)
        return found
