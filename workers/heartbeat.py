"""A model worker's entry in the `workers` table: what it serves, and a heartbeat while it lives.

The worker registers once at start (hostname, pid, device, model id, the model it holds by name and checkpoint
hash, kinds, max pixels, max batch, queues),
then a daemon thread refreshes its heartbeat (and served counts) every `heartbeat_seconds`; on a clean stop it
marks itself stopped. The sweeper marks workers whose heartbeat is old as gone. Rows are written through
`storage.fleet.registry.WorkerRegistry`; this module only schedules the writes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.db import SessionFactory
from storage.fleet.registry import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker advertises."""

    id: str
    hostname: str
    pid: int
    device: str
    model_id: str
    kinds: list[str]
    max_pixels: int
    max_batch: int
    queues: list[str]
    model_name: str | None = None  # the model it holds (None: the deployment default)
    checkpoint_hash: str | None = None  # model.checkpoint.checkpoint_hash of what it loaded


class Heartbeat:
    """Registers the worker and keeps its heartbeat fresh from a daemon thread."""

    def __init__(
        self, sessions: SessionFactory, info: WorkerInfo, interval_seconds: float,
        counts: Callable[[], tuple[int, int]] = lambda: (0, 0),
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = WorkerRegistry(sessions)
        self.info = info
        self._interval = interval_seconds
        self._counts = counts
        self._health = health
        self._reported = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        fields = dataclasses.asdict(self.info)
        self.registry.register(worker_id=fields.pop("id"), **fields)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval)
        try:
            self.beat()
            self.registry.stop(self.info.id)
        except Exception:
            log.exception("worker %s: could not record its stop", self.info.id)

    def beat(self) -> None:
        """One heartbeat, carrying the work served since the previous one (the registry adds it up)."""
        batches, jobs = self._counts()
        health = self._health() if self._health is not None else None
        self.registry.heartbeat(self.info.id, batches=batches - self._reported[0], jobs=jobs - self._reported[1],
                                health=health)
        self._reported = (batches, jobs)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except Exception:  # the database may blip; the next beat retries
                log.exception("worker %s: heartbeat failed", self.info.id)
