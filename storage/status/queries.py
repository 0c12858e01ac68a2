"""StatusQueries: the aggregate reads behind the public status page (`GET /ui`), which reveal no one's work.

Owns the SQL for "how much work is waiting or running, per queue": one grouped count over the active jobs.
Per-owner listings go through `JobStore`/`BatchStore`, job counts per status through `JobQueries`, live workers
through `WorkerRegistry`. It knows nothing of HTML or HTTP; nothing here writes a row.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.states import ACTIVE_STATUSES
from storage.tables import Job


class StatusQueries:
    """Read-only aggregates for the status page; every call opens its own short session."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def active_by_queue(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per queue: `{queue: {"queued": n, "running": m}}`, only queues with any."""
        stmt = (select(Job.queue, Job.status, func.count()).where(Job.status.in_(ACTIVE_STATUSES))
                .group_by(Job.queue, Job.status))
        queues: dict[str, dict[str, int]] = {}
        with self.sessions() as s:
            for queue, status, n in s.execute(stmt).all():
                queues.setdefault(queue, {str(a): 0 for a in ACTIVE_STATUSES})[status] = int(n)
        return queues
