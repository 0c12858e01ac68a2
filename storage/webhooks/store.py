"""WebhookStore: the one store over the webhook tables (endpoints, outbox events, their attempts).

Two callers, one class:
- the API, owner-scoped: a job's delivery log, replay, endpoints (list, default, enable). Another owner's job,
  event or endpoint is `NotFound`, never a hint that it exists. Replay makes an event due now (same `webhook-id`;
  it keeps its attempt count, so a replay of an exhausted event is one more try), refused while its endpoint is
  disabled.
- the delivering worker: writes due `job.progress` events (`storage.jobs.progress`), claims due events, records
  each attempt's outcome, disables an endpoint on 410 Gone and reads what an event is about (job or batch).

A claim is a delivery lease: in one transaction the event's `attempts` goes up by one, its `next_attempt_at`
moves to `now + lease` (so a worker killed mid-delivery simply lets the lease run out and the event becomes due
again) and an attempt row is opened. `attempts` is the fencing token: `finish` only writes if the event still
carries the attempts value it was claimed with, so a worker whose lease ran out never overwrites a newer attempt.
Postgres claims with `FOR UPDATE SKIP LOCKED`; SQLite takes its write lock at BEGIN (`write_session`).

Endpoint rows are created on first use (`_ensure_endpoint`). Rows written in a state change's own transaction
belong to `storage.webhooks.outbox`; secrets and a key's default URL to `storage.keys.KeyStore`; delivery policy
(retries, 410, signing, SSRF checks) to `workers.webhooks`.
"""

from __future__ import annotations

import builtins
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import dialect
from storage.batches.completion import batch_counts
from storage.db import write_session
from storage.errors import Conflict, NotFound
from storage.jobs.ids import new_id
from storage.jobs.progress import progress_hold, write_progress_events
from storage.records import BatchRecord, JobRecord
from storage.tables import ApiKey, Batch, Job, WebhookAttempt, WebhookEndpoint, WebhookEvent, utcnow
from storage.webhooks.records import (
    AttemptOutcome,
    AttemptRecord,
    ClaimedEvent,
    EndpointRecord,
    EventRecord,
)

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the worker stopped or its lease ran out before an answer"
DEFAULT_LEASE_SECONDS = 35.0
DEFAULT_PROGRESS_INTERVAL_SECONDS = 3.0


class WebhookStore:
    """Reads and writes on webhook endpoints, outbox events and attempts; every call opens its own session."""

    def __init__(self, session_factory: sessionmaker[Session], *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 progress_interval: float = DEFAULT_PROGRESS_INTERVAL_SECONDS) -> None:
        self.sessions = session_factory
        self.lease = timedelta(seconds=lease_seconds)
        self.progress_interval = timedelta(seconds=progress_interval)

    # ---- the API: owner-scoped ------------------------------------------------------------------------------
    def deliveries(self, job_id: str, owner_id: str) -> builtins.list[EventRecord]:
        """Every outbox event of the job, oldest first, each with its attempts."""
        with self.sessions() as s:
            if s.scalar(select(Job.id).where(Job.id == job_id, Job.owner_id == owner_id)) is None:
                raise NotFound(f"job {job_id} not found")
            events = s.scalars(
                select(WebhookEvent).where(WebhookEvent.job_id == job_id, WebhookEvent.owner_id == owner_id)
                .order_by(WebhookEvent.id)
            ).all()
            return [_event(s, e) for e in events]

    def replay(self, event_id: str, owner_id: str, now: datetime | None = None) -> EventRecord:
        """Make the event due now (status pending); refused while its endpoint is disabled."""
        now = now or utcnow()
        with write_session(self.sessions) as s:
            row = s.scalars(
                select(WebhookEvent).where(WebhookEvent.id == event_id, WebhookEvent.owner_id == owner_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"webhook event {event_id} not found")
            endpoint = _endpoint_row(s, owner_id, row.url)
            if endpoint is not None and not endpoint.enabled:
                raise Conflict(f"webhook endpoint {endpoint.id} is disabled; enable it first")
            row.status = "pending"
            row.next_attempt_at = now
            row.delivered_at = None
            s.flush()
            return _event(s, row)

    def endpoints(self, owner_id: str) -> builtins.list[EndpointRecord]:
        """The owner's endpoints (the default one included once set), oldest first."""
        with self.sessions() as s:
            default = s.scalar(select(ApiKey.default_webhook_url).where(ApiKey.id == owner_id))
            rows = s.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id)
                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            ).all()
            return [_endpoint(r, default) for r in rows]

    def set_default(self, owner_id: str, url: str | None, events: builtins.list[str] | None = None,
                    now: datetime | None = None) -> EndpointRecord | None:
        """Set (or clear, with None) the key's default endpoint and its events; returns its endpoint row.

        No events (None) means `storage.states.DEFAULT_EVENT_TYPES`: every state change but progress.
        """
        now = now or utcnow()
        with write_session(self.sessions) as s:
            key = s.get(ApiKey, owner_id)
            if key is None:
                raise NotFound(f"api key {owner_id} not found")
            key.default_webhook_url = url
            key.default_webhook_events = events if url else None
            if url is None:
                return None
            _ensure_endpoint(s, owner_id, url, now)
            row = _endpoint_row(s, owner_id, url)
            assert row is not None
            return _endpoint(row, url)

    def enable(self, endpoint_id: str, owner_id: str) -> EndpointRecord:
        """Re-enable a disabled endpoint (new events are delivered again; dropped ones can be replayed)."""
        with write_session(self.sessions) as s:
            row = s.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                              WebhookEndpoint.owner_id == owner_id)
            ).first()
            if row is None:
                raise NotFound(f"webhook endpoint {endpoint_id} not found")
            row.enabled, row.disabled_at, row.disabled_reason = True, None, None
            default = s.scalar(select(ApiKey.default_webhook_url).where(ApiKey.id == owner_id))
            return _endpoint(row, default)

    # ---- the worker: progress events, claims, outcomes ------------------------------------------------------
    def emit_progress_events(self, now: datetime, limit: int = 500) -> int:
        """Write due `job.progress` events (at most one per running job per interval); returns how many."""
        with write_session(self.sessions) as s:
            return write_progress_events(s, now, self.progress_interval, limit)

    def claim_due(self, now: datetime, limit: int) -> builtins.list[ClaimedEvent]:
        """Lease up to `limit` pending events due at `now`, oldest due first.

        Events of a disabled endpoint are dropped; progress events may be dropped or deferred (see
        `storage.jobs.progress.progress_hold`).
        """
        stmt = (
            select(WebhookEvent)
            .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= now)
            .order_by(WebhookEvent.next_attempt_at, WebhookEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed: builtins.list[ClaimedEvent] = []
        with write_session(self.sessions) as s:
            enabled: dict[tuple[str, str], bool] = {}  # endpoint state, looked up once per claim
            for row in s.scalars(stmt).all():
                endpoint = (row.owner_id, row.url)
                if endpoint not in enabled:
                    enabled[endpoint] = _endpoint_enabled(s, *endpoint)
                hold = progress_hold(s, row, now, self.progress_interval) if enabled[endpoint] else "endpoint disabled"
                if hold is None:
                    claimed.append(self._lease(s, row, now))
                elif isinstance(hold, str):
                    _drop(row, hold)
                else:
                    row.next_attempt_at = hold  # a progress event sent too soon after the last one: wait
            for owner_id, url in {(e.owner_id, e.url) for e in claimed}:
                _ensure_endpoint(s, owner_id, url, now)
        return claimed

    def _lease(self, s: Session, row: WebhookEvent, now: datetime) -> ClaimedEvent:
        if row.attempts:  # a previous attempt that never reported: its worker died or its lease ran out
            s.execute(
                update(WebhookAttempt)
                .where(WebhookAttempt.event_id == row.id, WebhookAttempt.latency_ms.is_(None),
                       WebhookAttempt.error.is_(None))
                .values(error=INTERRUPTED)
            )
        row.attempts += 1
        row.next_attempt_at = now + self.lease
        attempt = WebhookAttempt(id=new_id(), event_id=row.id, attempt=row.attempts, started_at=now)
        s.add(attempt)
        return ClaimedEvent(
            id=row.id, owner_id=row.owner_id, job_id=row.job_id, batch_id=row.batch_id,
            event_type=row.event_type, url=row.url, attempt=row.attempts, attempt_id=attempt.id,
            payload=dict(row.payload), created_at=row.created_at,
        )

    def finish(self, event: ClaimedEvent, outcome: AttemptOutcome, status: str,
               next_attempt_at: datetime | None, now: datetime) -> bool:
        """Record the attempt and move the event to `status` (pending with `next_attempt_at`, delivered, failed).

        Returns False (and writes nothing to the event) when the lease was lost to a newer claim.
        """
        with write_session(self.sessions) as s:
            values: dict[str, Any] = {"status": status, "next_attempt_at": next_attempt_at}
            if status == "delivered":
                values["delivered_at"] = now
            result = s.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event.id, WebhookEvent.status == "pending",
                       WebhookEvent.attempts == event.attempt)
                .values(**values)
            )
            s.execute(
                update(WebhookAttempt).where(WebhookAttempt.id == event.attempt_id).values(
                    status_code=outcome.status_code, latency_ms=outcome.latency_ms,
                    response_snippet=outcome.snippet, error=outcome.error,
                )
            )
            if status == "delivered":
                s.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.owner_id == event.owner_id, WebhookEndpoint.url == event.url)
                    .values(last_success_at=now)
                )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def disable_endpoint(self, owner_id: str, url: str, reason: str, now: datetime) -> int:
        """Disable the owner's endpoint and drop its pending events; returns how many were dropped."""
        # lock order as in `finish` (event rows, then the endpoint row), so the two never deadlock
        with write_session(self.sessions) as s:
            dropped = s.execute(
                update(WebhookEvent)
                .where(WebhookEvent.owner_id == owner_id, WebhookEvent.url == url,
                       WebhookEvent.status == "pending")
                .values(status="dropped", next_attempt_at=None)
            )
            _ensure_endpoint(s, owner_id, url, now)
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.url == url)
                .values(enabled=False, disabled_at=now, disabled_reason=reason)
            )
            return int(dropped.rowcount or 0)  # type: ignore[attr-defined]

    def subject(self, event: ClaimedEvent) -> JobRecord | BatchRecord | None:
        """The job or batch the event is about, as it is now (batch with its counts); None if the row is gone."""
        with self.sessions() as s:
            if event.job_id is not None:
                job = s.get(Job, event.job_id)
                return JobRecord.of(job) if job is not None else None
            if event.batch_id is not None:
                batch = s.get(Batch, event.batch_id)
                return BatchRecord.of(batch, batch_counts(s, batch.id)) if batch is not None else None
        return None


def _drop(row: WebhookEvent, reason: str) -> None:
    log.info("webhook %s %s dropped (%s) job=%s batch=%s", row.id, row.event_type, reason, row.job_id, row.batch_id)
    row.status = "dropped"
    row.next_attempt_at = None


def _ensure_endpoint(s: Session, owner_id: str, url: str, now: datetime) -> None:
    """Insert the (owner, url) endpoint row, enabled, unless it exists (safe under concurrency)."""
    stmt = dialect.insert(s, WebhookEndpoint).values(
        id=new_id(), owner_id=owner_id, url=url, enabled=True, created_at=now
    ).on_conflict_do_nothing(index_elements=["owner_id", "url"])
    s.execute(stmt)


def _endpoint_enabled(s: Session, owner_id: str, url: str) -> bool:
    enabled = s.scalar(
        select(WebhookEndpoint.enabled).where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.url == url)
    )
    return enabled is None or bool(enabled)


def _endpoint_row(s: Session, owner_id: str, url: str) -> WebhookEndpoint | None:
    return s.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.url == url)
    ).first()


def _endpoint(row: WebhookEndpoint, default_url: str | None) -> EndpointRecord:
    return EndpointRecord(row.id, row.url, row.enabled, row.disabled_at, row.disabled_reason, row.created_at,
                          row.last_success_at, is_default=row.url == default_url)


def _event(s: Session, row: WebhookEvent) -> EventRecord:
    attempts = s.scalars(
        select(WebhookAttempt).where(WebhookAttempt.event_id == row.id).order_by(WebhookAttempt.started_at)
    ).all()
    log_ = tuple(AttemptRecord(a.attempt, a.started_at, a.status_code, a.latency_ms, a.response_snippet, a.error)
                 for a in attempts)
    return EventRecord(row.id, row.event_type, row.url, row.status, row.attempts, row.next_attempt_at,
                       row.created_at, row.delivered_at, row.job_id, row.batch_id, log_)
