"""ActivityQueries: the last hour of work in time buckets, and webhook health, for the status page.

Owns two reads: finished jobs per bucket (succeeded, failed) with mean and max time from submission to finish
(queue + model + upload seconds, as the worker recorded them), in ONE query of conditional aggregates so it runs
the same on Postgres and SQLite; and the webhook endpoints that are failing (events failed or retried within the
window) with each one's last error. It knows nothing of HTML or charts (`api.status.charts` draws them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from storage.tables import Job, WebhookAttempt, WebhookEvent, utcnow

LAST_ERRORS_SCANNED = 200


@dataclass(frozen=True)
class ActivityBucket:
    start: datetime
    succeeded: int
    failed: int
    mean_seconds: float | None
    max_seconds: float | None


@dataclass(frozen=True)
class FailingEndpoint:
    url: str
    failed: int
    retrying: int
    last_error: str


class ActivityQueries:
    """Read-only; every call opens its own short session."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def last_hour(self, now: datetime | None = None, buckets: int = 12) -> list[ActivityBucket]:
        """`buckets` equal slices of the hour before `now`, oldest first."""
        now = now or utcnow()
        width = timedelta(hours=1) / buckets
        starts = [now - width * (buckets - i) for i in range(buckets)]
        took = Job.queue_seconds + Job.model_seconds + func.coalesce(Job.upload_seconds, 0.0)
        columns: list[Any] = []
        for start in starts:
            inside = and_(Job.finished_at >= start, Job.finished_at < start + width)
            columns += [
                func.sum(case((and_(inside, Job.status == "succeeded"), 1), else_=0)),
                func.sum(case((and_(inside, Job.status.in_(("failed", "expired"))), 1), else_=0)),
                func.avg(case((and_(inside, Job.status == "succeeded"), took))),
                func.max(case((and_(inside, Job.status == "succeeded"), took))),
            ]
        stmt = select(*columns).where(Job.finished_at >= starts[0])
        with self.sessions() as s:
            row = s.execute(stmt).one()
        return [ActivityBucket(start, int(row[4 * i] or 0), int(row[4 * i + 1] or 0), _float(row[4 * i + 2]),
                               _float(row[4 * i + 3])) for i, start in enumerate(starts)]

    def failing_endpoints(self, owner_id: str | None, now: datetime | None = None,
                          window: timedelta = timedelta(hours=24), limit: int = 10) -> list[FailingEndpoint]:
        """Endpoints with failed or retrying events created within `window` (one owner's, or everyone's)."""
        since = (now or utcnow()) - window
        failed = func.sum(case((WebhookEvent.status == "failed", 1), else_=0))
        retrying = func.sum(case((and_(WebhookEvent.status == "pending", WebhookEvent.attempts > 0), 1), else_=0))
        stmt = (select(WebhookEvent.url, failed, retrying)
                .where(WebhookEvent.created_at >= since,
                       or_(WebhookEvent.status == "failed",
                           and_(WebhookEvent.status == "pending", WebhookEvent.attempts > 0)))
                .group_by(WebhookEvent.url).order_by(failed.desc(), retrying.desc()).limit(limit))
        if owner_id is not None:
            stmt = stmt.where(WebhookEvent.owner_id == owner_id)
        with self.sessions() as s:
            rows = s.execute(stmt).all()
            errors = self._last_errors(s, [r[0] for r in rows], owner_id, since)
        return [FailingEndpoint(url, int(f or 0), int(r or 0), errors.get(url, "")) for url, f, r in rows]

    @staticmethod
    def _last_errors(s: Session, urls: list[str], owner_id: str | None, since: datetime) -> dict[str, str]:
        if not urls:
            return {}
        stmt = (select(WebhookEvent.url, WebhookAttempt.status_code, WebhookAttempt.error)
                .join(WebhookAttempt, WebhookAttempt.event_id == WebhookEvent.id)
                .where(WebhookEvent.url.in_(urls), WebhookAttempt.started_at >= since)
                .order_by(WebhookAttempt.started_at.desc()).limit(LAST_ERRORS_SCANNED))
        if owner_id is not None:
            stmt = stmt.where(WebhookEvent.owner_id == owner_id)
        last: dict[str, str] = {}
        for url, code, error in s.execute(stmt).all():
            last.setdefault(url, error or (f"HTTP {code}" if code else "no answer"))
        return last


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
