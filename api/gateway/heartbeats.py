"""Gateway heartbeats, batched: one transaction per interval for all the remote workers this process hears.

A remote worker beats every `heartbeat_seconds`; written one by one, a thousand idle workers cost the database a
hundred transactions a second for nothing. The first beat of a worker this process has not seen (or a `start`)
is written at once (it registers the worker when its row is missing); later beats are kept in memory, summed
per worker (served counts add up, the latest health wins), and written together every `interval` seconds by
`WorkerRegistry.heartbeat_many` from a daemon thread. A worker whose row turned out missing is forgotten, so its
next beat registers it again. `stop()` writes what is pending. A beat is at most `interval` late in
`GET /v1/workers`, far inside the three missed beats that count a worker as gone. Knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from storage.fleet.registry import Beat, WorkerRegistry

log = logging.getLogger(__name__)


class HeartbeatBatcher:
    """Pending beats of the workers this process knows, written together every `interval` seconds."""

    def __init__(self, registry: WorkerRegistry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self._known: set[str] = set()
        self._pending: dict[str, Beat] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushes = 0

    def beat(self, worker_id: str, batches: int = 0, jobs: int = 0, health: dict[str, Any] | None = None) -> bool:
        """Keep a known worker's beat for the next write (True); False for a worker this process has not seen
        yet: write that one at once (`registry.heartbeat`, then `known` when its row exists)."""
        with self._lock:
            if worker_id not in self._known:
                return False
            pending = self._pending.get(worker_id)
            if pending is None:
                self._pending[worker_id] = Beat(worker_id, datetime.now(UTC), batches, jobs, health)
            else:
                pending.at = datetime.now(UTC)
                pending.batches, pending.jobs = pending.batches + batches, pending.jobs + jobs
                pending.health = health if health is not None else pending.health
            self._ensure_thread()
            return True

    def known(self, worker_id: str) -> None:
        """This worker's row exists (just registered or heartbeated directly)."""
        with self._lock:
            self._known.add(worker_id)

    def forget(self, worker_id: str) -> None:
        """Drop a worker's pending beat and knowledge (it (re)starts or stops: written directly)."""
        with self._lock:
            self._known.discard(worker_id)
            self._pending.pop(worker_id, None)

    def flush(self) -> int:
        """Write every pending beat in one transaction; how many were written."""
        with self._lock:
            beats, self._pending = list(self._pending.values()), {}
        if not beats:
            return 0
        try:
            found = self.registry.heartbeat_many(beats)
        except Exception as exc:  # noqa: BLE001 - the database is away: keep them for the next write
            log.warning("could not write %d heartbeats (%s); retrying next interval", len(beats), exc)
            with self._lock:
                for b in beats:
                    newer = self._pending.setdefault(b.worker_id, b)
                    if newer is not b:
                        newer.batches, newer.jobs = newer.batches + b.batches, newer.jobs + b.jobs
            return 0
        with self._lock:
            self._known -= {b.worker_id for b in beats} - found
        self.flushes += 1
        return len(found)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="heartbeat-batcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
