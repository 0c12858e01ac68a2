"""FleetQueries: the scrape-time picture of the whole deployment, in three grouped reads.

Owns the SQL behind the operator's gauges: per-queue depth and oldest queued age, running jobs per queue, live
workers by queue and device, and the webhook outbox backlog with its oldest pending age. Each call reads the
`jobs` rows that are queued or running (grouped by queue and status, served by the `status` index), the live
`workers` rows (a handful; also counted by transport) and one aggregate over pending outbox rows: never a query per job. It knows nothing
of Prometheus or HTTP; callers cache the snapshot (see `api.metrics`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.routing import gpu_queues
from storage.tables import Job, WebhookEvent, Worker, utcnow

KINDS = ("generate", "edit", "understand")
ALL_GPU_QUEUES = tuple(gpu_queues(KINDS, 1 << 62))


@dataclass(frozen=True)
class QueueState:
    """One GPU queue at the time of the snapshot."""

    queued: int = 0
    running: int = 0
    oldest_queued_seconds: float = 0.0


@dataclass(frozen=True)
class FleetSnapshot:
    """What `FleetQueries.snapshot` read; every known GPU queue is present (zeros included)."""

    queues: dict[str, QueueState]
    live_workers: dict[tuple[str, str], int]  # (queue, device) -> live workers subscribed to it
    webhook_backlog: int = 0
    webhook_oldest_pending_seconds: float = 0.0
    taken_at: datetime = field(default_factory=utcnow)
    live_by_transport: dict[str, int] = field(default_factory=dict)  # "direct" / "remote" -> live workers


class FleetQueries:
    """Reads the fleet snapshot; a worker counts as live when its heartbeat is within `stale_after_seconds`."""

    def __init__(self, session_factory: sessionmaker[Session], stale_after_seconds: float) -> None:
        self.sessions = session_factory
        self.stale_after_seconds = stale_after_seconds

    def snapshot(self, now: datetime | None = None) -> FleetSnapshot:
        now = now or utcnow()
        with self.sessions() as s:
            queues = self._queues(s, now)
            workers = self._live_workers(s, now)
            transports = self._live_by_transport(s, now)
            backlog, oldest = self._webhooks(s, now)
        return FleetSnapshot(queues, workers, backlog, oldest, now, transports)

    def _queues(self, s: Session, now: datetime) -> dict[str, QueueState]:
        waiting_since = func.coalesce(Job.queued_at, Job.created_at)
        stmt = (select(Job.queue, Job.status, func.count(), func.min(waiting_since))
                .where(Job.status.in_(("queued", "running"))).group_by(Job.queue, Job.status))
        found: dict[str, dict[str, tuple[int, datetime | None]]] = {}
        for queue, status, n, first in s.execute(stmt).all():
            found.setdefault(queue, {})[status] = (int(n), first)
        states = {}
        for queue in sorted(set(ALL_GPU_QUEUES) | set(found)):
            by_status = found.get(queue, {})
            queued, oldest_queued = by_status.get("queued", (0, None))
            states[queue] = QueueState(queued, by_status.get("running", (0, None))[0], _age(now, oldest_queued))
        return states

    def _live_workers(self, s: Session, now: datetime) -> dict[tuple[str, str], int]:
        cutoff = now - timedelta(seconds=self.stale_after_seconds)
        stmt = select(Worker.queues, Worker.device).where(Worker.stopped_at.is_(None),
                                                          Worker.last_heartbeat_at >= cutoff)
        counts: Counter[tuple[str, str]] = Counter()
        for queues, device in s.execute(stmt).all():
            for queue in queues or []:
                counts[(queue, _device_class(device))] += 1
        return dict(counts)

    def _live_by_transport(self, s: Session, now: datetime) -> dict[str, int]:
        """Live workers by how they reach the deployment (direct, or remote through the worker gateway)."""
        cutoff = now - timedelta(seconds=self.stale_after_seconds)
        stmt = (select(Worker.transport, func.count()).where(Worker.stopped_at.is_(None),
                                                             Worker.last_heartbeat_at >= cutoff)
                .group_by(Worker.transport))
        found = {str(transport): int(n) for transport, n in s.execute(stmt).all()}
        return {"direct": found.get("direct", 0), "remote": found.get("remote", 0)}

    def _webhooks(self, s: Session, now: datetime) -> tuple[int, float]:
        stmt = select(func.count(), func.min(WebhookEvent.created_at)).where(WebhookEvent.status == "pending")
        n, oldest = s.execute(stmt).one()
        return int(n or 0), _age(now, oldest)


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:  # SQLite aggregates may come back naive (UTC)
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def _device_class(device: str | None) -> str:
    """`cuda:3` -> `cuda` (a device label per GPU index would only add cardinality)."""
    return (device or "unknown").split(":", 1)[0]
