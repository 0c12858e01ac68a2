"""The webhook worker's reads and writes on the outbox: claim due events, record attempts, disable endpoints.

A claim is a delivery lease: in one transaction the event's `attempts` goes up by one, its `next_attempt_at`
moves to `now + lease` (so a worker killed mid-delivery simply lets the lease run out and the event becomes due
again) and an attempt row is opened. `attempts` is the fencing token: `finish` only writes if the event still
carries the attempts value it was claimed with, so a worker whose lease ran out never overwrites a newer attempt.
Postgres claims with `FOR UPDATE SKIP LOCKED`; SQLite takes its write lock at BEGIN (`write_session`).

`job.progress` events are throttled here, at claim time: one older than a newer progress event of the same job,
or whose job is no longer running, is dropped; one due sooner than `progress_interval` after the last progress
send of its job is deferred. Delivery policy (retries, 410) lives in `workers.webhooks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import write_session
from storage.ids import new_id
from storage.tables import Job, WebhookAttempt, WebhookEndpoint, WebhookEvent
from storage.webhook_admin import ensure_endpoint

log = logging.getLogger(__name__)

PROGRESS_EVENT = "job.progress"
INTERRUPTED = "interrupted: the worker stopped or its lease ran out before an answer"


@dataclass(frozen=True)
class ClaimedEvent:
    """An event leased to this worker for one attempt; `attempt` is the fencing token (attempts after claim)."""

    id: str
    owner_id: str
    job_id: str | None
    batch_id: str | None
    event_type: str
    url: str
    attempt: int
    attempt_id: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt produced, as recorded in `webhook_attempts`."""

    status_code: int | None
    latency_ms: float | None
    snippet: str | None
    error: str | None


class WebhookStore:
    """Outbox operations for the delivering worker, over one session factory."""

    def __init__(self, session_factory: sessionmaker[Session], lease_seconds: float,
                 progress_interval: float = 3.0) -> None:
        self.session_factory = session_factory
        self.lease = timedelta(seconds=lease_seconds)
        self.progress_interval = timedelta(seconds=progress_interval)

    # -- claiming ---------------------------------------------------------------------------------------------
    def claim_due(self, now: datetime, limit: int, event_id: str | None = None) -> list[ClaimedEvent]:
        """Lease up to `limit` pending events due at `now` (or just `event_id`), oldest due first."""
        stmt = (
            select(WebhookEvent)
            .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= now)
            .order_by(WebhookEvent.next_attempt_at, WebhookEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if event_id is not None:
            stmt = stmt.where(WebhookEvent.id == event_id)
        claimed: list[ClaimedEvent] = []
        with write_session(self.session_factory) as session:
            enabled: dict[tuple[str, str], bool] = {}  # endpoint state, looked up once per claim
            for row in session.scalars(stmt).all():
                endpoint = (row.owner_id, row.url)
                if endpoint not in enabled:
                    enabled[endpoint] = self._endpoint_enabled(session, *endpoint)
                if not enabled[endpoint]:
                    _drop(row, "endpoint disabled")
                elif not self._hold_back(session, row, now):
                    claimed.append(self._lease(session, row, now))
            for owner_id, url in {(e.owner_id, e.url) for e in claimed}:
                ensure_endpoint(session, owner_id, url, now)
        return claimed

    def _hold_back(self, session: Session, row: WebhookEvent, now: datetime) -> bool:
        """Drop or defer a progress event instead of sending it now; True when it was held back."""
        if row.event_type != PROGRESS_EVENT or row.job_id is None:
            return False
        job_status = session.scalar(select(Job.status).where(Job.id == row.job_id))
        newer = session.scalar(
            select(func.count()).select_from(WebhookEvent).where(
                WebhookEvent.job_id == row.job_id, WebhookEvent.event_type == PROGRESS_EVENT,
                WebhookEvent.id > row.id, WebhookEvent.status.in_(("pending", "delivered", "failed")),
            )
        )
        if job_status != "running" or newer:
            _drop(row, "progress superseded" if newer else "job no longer running")
            return True
        last_sent = session.scalar(
            select(func.max(WebhookAttempt.started_at))
            .join(WebhookEvent, WebhookEvent.id == WebhookAttempt.event_id)
            .where(WebhookEvent.job_id == row.job_id, WebhookEvent.event_type == PROGRESS_EVENT)
        )
        if last_sent is not None and last_sent + self.progress_interval > now:
            row.next_attempt_at = last_sent + self.progress_interval
            return True
        return False

    def _lease(self, session: Session, row: WebhookEvent, now: datetime) -> ClaimedEvent:
        if row.attempts:  # a previous attempt that never reported: its worker died or its lease ran out
            session.execute(
                update(WebhookAttempt)
                .where(WebhookAttempt.event_id == row.id, WebhookAttempt.latency_ms.is_(None),
                       WebhookAttempt.error.is_(None))
                .values(error=INTERRUPTED)
            )
        row.attempts += 1
        row.next_attempt_at = now + self.lease
        attempt = WebhookAttempt(id=new_id(), event_id=row.id, attempt=row.attempts, started_at=now)
        session.add(attempt)
        return ClaimedEvent(
            id=row.id, owner_id=row.owner_id, job_id=row.job_id, batch_id=row.batch_id,
            event_type=row.event_type, url=row.url, attempt=row.attempts, attempt_id=attempt.id,
            payload=dict(row.payload), created_at=row.created_at,
        )

    # -- outcomes ---------------------------------------------------------------------------------------------
    def finish(self, event: ClaimedEvent, outcome: AttemptOutcome, status: str,
               next_attempt_at: datetime | None, now: datetime) -> bool:
        """Record the attempt and move the event to `status` (pending with `next_attempt_at`, delivered, failed).

        Returns False (and writes nothing to the event) when the lease was lost to a newer claim.
        """
        with write_session(self.session_factory) as session:
            values: dict[str, Any] = {"status": status, "next_attempt_at": next_attempt_at}
            if status == "delivered":
                values["delivered_at"] = now
            result = session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event.id, WebhookEvent.status == "pending",
                       WebhookEvent.attempts == event.attempt)
                .values(**values)
            )
            session.execute(
                update(WebhookAttempt).where(WebhookAttempt.id == event.attempt_id).values(
                    status_code=outcome.status_code, latency_ms=outcome.latency_ms,
                    response_snippet=outcome.snippet, error=outcome.error,
                )
            )
            if status == "delivered":
                session.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.owner_id == event.owner_id, WebhookEndpoint.url == event.url)
                    .values(last_success_at=now)
                )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def disable_endpoint(self, owner_id: str, url: str, reason: str, now: datetime) -> int:
        """Disable the owner's endpoint and drop its pending events; returns how many were dropped."""
        # lock order as in `finish` (event rows, then the endpoint row), so the two never deadlock
        with write_session(self.session_factory) as session:
            dropped = session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.owner_id == owner_id, WebhookEvent.url == url,
                       WebhookEvent.status == "pending")
                .values(status="dropped", next_attempt_at=None)
            )
            ensure_endpoint(session, owner_id, url, now)
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.url == url)
                .values(enabled=False, disabled_at=now, disabled_reason=reason)
            )
            return int(dropped.rowcount or 0)  # type: ignore[attr-defined]

    # -- reads ------------------------------------------------------------------------------------------------
    @staticmethod
    def _endpoint_enabled(session: Session, owner_id: str, url: str) -> bool:
        enabled = session.scalar(
            select(WebhookEndpoint.enabled).where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.url == url)
        )
        return enabled is None or bool(enabled)


def _drop(row: WebhookEvent, reason: str) -> None:
    log.info("webhook %s %s dropped (%s) job=%s batch=%s", row.id, row.event_type, reason, row.job_id, row.batch_id)
    row.status = "dropped"
    row.next_attempt_at = None


