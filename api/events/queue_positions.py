"""Queue positions for event streams: one snapshot per queue, at most every `TTL_S`, shared by every stream.

Thousands of streams opening at once (or seeing their jobs requeued) must not each count the queue: a stream asks
here, and the process reads `storage.scheduling.snapshot` once per queue and TTL, then answers every job of that queue
from memory. Positions are estimates anyway (labelled so in the API); being a few seconds old is within that.
Knows nothing of HTTP or of streams.
"""

from __future__ import annotations

import threading
import time

from storage.db import SessionFactory
from storage.records import JobRecord
from storage.scheduling import snapshot as queue_snapshot
from storage.scheduling.estimates import QueueEstimate

TTL_S = 3.0


class QueuePositions:
    """Per-queue snapshots, refreshed at most every `ttl_s`; thread-safe (callers run in the thread pool)."""

    def __init__(self, sessions: SessionFactory, ttl_s: float = TTL_S) -> None:
        self._sessions = sessions
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._queues: dict[str, tuple[float, queue_snapshot.QueueSnapshot]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self.reads = 0

    def estimate(self, job: JobRecord) -> QueueEstimate:
        """The job's queue position and start estimate from its queue's shared snapshot."""
        return self._snapshot(job.queue).estimate(job)

    def _snapshot(self, queue: str) -> queue_snapshot.QueueSnapshot:
        with self._lock:
            found = self._queues.get(queue)
            if found is not None and time.monotonic() - found[0] < self._ttl:
                return found[1]
            queue_lock = self._locks.setdefault(queue, threading.Lock())
        with queue_lock:  # one reader per queue; the others wait for its snapshot
            with self._lock:
                found = self._queues.get(queue)
                if found is not None and time.monotonic() - found[0] < self._ttl:
                    return found[1]
            snapshot = queue_snapshot.read(self._sessions, queue)
            self.reads += 1
            with self._lock:
                self._queues[queue] = (time.monotonic(), snapshot)
            return snapshot
