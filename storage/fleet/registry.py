"""WorkerRegistry: which worker processes exist, what they serve, and when they last showed signs of life.

Workers register at start, heartbeat while alive (adding what they served since the last beat) and mark
themselves stopped on graceful shutdown. A worker whose heartbeat is older than a threshold counts as gone;
its jobs come back through lease expiry (JobStore.requeue_expired), not through this table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import write_session
from storage.tables import Worker, utcnow

log = logging.getLogger(__name__)


@dataclass
class Beat:
    """One worker's heartbeat (and the work it reported) waiting to be written with others."""

    worker_id: str
    at: datetime
    batches: int = 0
    jobs: int = 0
    health: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    hostname: str
    pid: int
    device: str | None
    model_id: str | None
    kinds: list[str]
    max_pixels: int | None
    max_batch: int | None
    queues: list[str]
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None
    batches_served: int
    jobs_served: int
    health: dict[str, Any] | None = None
    transport: str = "direct"  # or "remote": through the HTTPS worker gateway
    model_name: str | None = None  # the model it holds, by name; None: the deployment's default model
    checkpoint_hash: str | None = None  # a digest of its checkpoint's weight files

    @classmethod
    def of(cls, row: Worker) -> WorkerRecord:
        return cls(row.id, row.hostname, row.pid, row.device, row.model_id, list(row.kinds or []),
                   row.max_pixels, row.max_batch, list(row.queues or []), row.started_at,
                   row.last_heartbeat_at, row.stopped_at, row.batches_served, row.jobs_served,
                   dict(row.health) if row.health else None, row.transport or "direct", row.model_name,
                   row.checkpoint_hash)


class WorkerRegistry:
    """The `workers` table."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def register(self, worker_id: str, hostname: str, pid: int, device: str | None = None,
                 model_id: str | None = None, kinds: list[str] | None = None,
                 max_pixels: int | None = None, max_batch: int | None = None,
                 queues: list[str] | None = None, transport: str = "direct", model_name: str | None = None,
                 checkpoint_hash: str | None = None) -> WorkerRecord:
        """Insert or refresh this worker (a restarted worker with the same id starts anew). `model_name`: the
        model it holds (None: the deployment's default), `checkpoint_hash`: the digest of its weight files."""
        now = utcnow()
        values: dict[str, Any] = {
            "hostname": hostname, "pid": pid, "device": device, "model_id": model_id, "kinds": kinds or [],
            "max_pixels": max_pixels, "max_batch": max_batch, "queues": queues or [], "started_at": now,
            "last_heartbeat_at": now, "stopped_at": None, "batches_served": 0, "jobs_served": 0,
            "transport": transport, "model_name": model_name, "checkpoint_hash": checkpoint_hash,
        }
        with write_session(self.sessions) as s:
            row = s.get(Worker, worker_id)
            if row is None:
                row = Worker(id=worker_id, **values)
                s.add(row)
            else:
                for name, value in values.items():
                    setattr(row, name, value)
            s.flush()
            log.info("worker %s registered on %s pid=%s device=%s model=%s", worker_id, hostname, pid, device,
                     model_name or "(default)")
            return WorkerRecord.of(row)

    def heartbeat(self, worker_id: str, batches: int = 0, jobs: int = 0,
                  health: dict[str, Any] | None = None) -> bool:
        """Record a sign of life (and work done since the last one, and the worker's own health report when
        given). False if the worker is unknown."""
        values: dict[str, Any] = {"last_heartbeat_at": utcnow(), "batches_served": Worker.batches_served + batches,
                                  "jobs_served": Worker.jobs_served + jobs}
        if health is not None:
            values["health"] = health
        stmt = update(Worker).where(Worker.id == worker_id).values(**values)
        with write_session(self.sessions) as s:
            result = s.execute(stmt, execution_options={"synchronize_session": False})
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def heartbeat_many(self, beats: Sequence[Beat]) -> set[str]:
        """Record many workers' heartbeats in ONE transaction (one UPDATE per shape, executed for all rows);
        the ids of the workers found (the others are unknown: they register again)."""
        if not beats:
            return set()
        with write_session(self.sessions) as s:
            found = set(s.scalars(select(Worker.id).where(Worker.id.in_([b.worker_id for b in beats]))))
            for with_health in (False, True):
                rows = [{"wid": b.worker_id, "at": b.at, "batches": b.batches, "jobs": b.jobs, "health": b.health}
                        for b in beats if b.worker_id in found and (b.health is not None) == with_health]
                if not rows:
                    continue
                table: Table = Worker.__table__  # type: ignore[assignment]
                values: dict[str, Any] = {"last_heartbeat_at": bindparam("at"),
                                          "batches_served": table.c.batches_served + bindparam("batches"),
                                          "jobs_served": table.c.jobs_served + bindparam("jobs")}
                if with_health:
                    values["health"] = bindparam("health", type_=table.c.health.type)
                s.execute(update(table).where(table.c.id == bindparam("wid")).values(**values),
                          [r if with_health else {k: v for k, v in r.items() if k != "health"} for r in rows])
        return found

    def stop(self, worker_id: str) -> None:
        """Mark a graceful stop."""
        with write_session(self.sessions) as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow()),
                      execution_options={"synchronize_session": False})
        log.info("worker %s stopped", worker_id)

    def live(self, stale_after_seconds: float) -> list[WorkerRecord]:
        """Workers not stopped whose last heartbeat is within `stale_after_seconds`."""
        cutoff = utcnow() - timedelta(seconds=stale_after_seconds)
        stmt = (select(Worker).where(Worker.stopped_at.is_(None), Worker.last_heartbeat_at >= cutoff)
                .order_by(Worker.started_at))
        with self.sessions() as s:
            return [WorkerRecord.of(r) for r in s.scalars(stmt)]

    def all(self) -> list[WorkerRecord]:
        with self.sessions() as s:
            return [WorkerRecord.of(r) for r in s.scalars(select(Worker).order_by(Worker.started_at))]
