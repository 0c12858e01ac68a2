"""WebhookAdmin: what an API key may see and do about its webhooks (delivery log, replay, endpoints).

Every call is scoped to an owner: another owner's job, event or endpoint is `NotFound`, never a hint that it
exists. Replay puts an event back in the outbox as due now (the dispatcher sends it with the same `webhook-id`;
it keeps its attempt count, so a replay of an exhausted event is one more try). Endpoint rows are created on
first use (`ensure_endpoint`, also used by the delivering worker); 410 Gone disables one, `enable` re-enables it.
Secrets and the key's default URL belong to `storage.keys.KeyStore`; delivery belongs to `workers.webhooks`.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from storage.db import is_sqlite, write_session
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import ApiKey, Job, WebhookAttempt, WebhookEndpoint, WebhookEvent, utcnow


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    response_snippet: str | None
    error: str | None


@dataclass(frozen=True)
class EventRecord:
    id: str
    event_type: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    job_id: str | None
    batch_id: str | None
    attempt_log: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    url: str
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    last_success_at: datetime | None
    is_default: bool


class WebhookAdmin:
    """Owner-scoped reads and writes on webhook events and endpoints."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

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

        No events (None) means `storage.outbox.DEFAULT_EVENTS`: every state change but progress.
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
            ensure_endpoint(s, owner_id, url, now)
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


def ensure_endpoint(session: Session, owner_id: str, url: str, now: datetime) -> None:
    """Insert the (owner, url) endpoint row, enabled, unless it exists (safe under concurrency)."""
    dialect = sqlite if is_sqlite(session.get_bind()) else postgresql  # type: ignore[arg-type]
    stmt = dialect.insert(WebhookEndpoint).values(
        id=new_id(), owner_id=owner_id, url=url, enabled=True, created_at=now
    ).on_conflict_do_nothing(index_elements=["owner_id", "url"])
    session.execute(stmt)


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
    log = tuple(AttemptRecord(a.attempt, a.started_at, a.status_code, a.latency_ms, a.response_snippet, a.error)
                for a in attempts)
    return EventRecord(row.id, row.event_type, row.url, row.status, row.attempts, row.next_attempt_at,
                       row.created_at, row.delivered_at, row.job_id, row.batch_id, log)
