"""The webhook outbox: event rows written in the same transaction as the state change they report.

`OutboxWriter` is used by `JobStore`/`BatchStore` inside their transactions; it decides where an event goes
(the job's own webhook, else its batch's, else the owner's default endpoint) and whether that target is
subscribed, and stores a payload snapshot in the Standard Webhooks shape `{"type", "timestamp", "data"}`.
Delivery (signing, retries, backoff) belongs to `workers.webhooks`; this module only writes rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.jobs.ids import new_message_id
from storage.states import DEFAULT_EVENT_TYPES, EventType
from storage.tables import ApiKey, Batch, Job, WebhookEvent

log = logging.getLogger(__name__)


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def job_payload(job: Job) -> dict[str, Any]:
    """The `data` of a job event: the job's public state at the time of the change (result keys, not URLs)."""
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "result_keys": list(job.result_keys or []),
        "result_text": job.result_text,
        "error": error,
        "attempts": job.attempts,
        "worker_id": job.worker_id,
        "metadata": job.metadata_,
    }


def batch_payload(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "total": batch.total,
        "counts": counts,
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
        "canceled_at": iso(batch.canceled_at),
        "metadata": batch.metadata_,
    }


def subscribed(events: list[str] | None, event_type: EventType) -> bool:
    """Whether a target that asked for `events` (None or empty: `DEFAULT_EVENT_TYPES`) gets `event_type`."""
    return event_type in (events if events else DEFAULT_EVENT_TYPES)


class OutboxWriter:
    """Writes outbox rows into one session; caches batch and owner lookups for the transaction's length."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._batches: dict[str, Batch | None] = {}
        self._defaults: dict[str, tuple[str | None, list[str] | None]] = {}

    def job_event(self, job: Job, event_type: EventType, now: datetime) -> WebhookEvent | None:
        """Record `event_type` for this job if its target is subscribed; returns the row or None."""
        target = self._job_target(job)
        if target is None or not subscribed(target[1], event_type):
            return None
        return self._add(job.owner_id, job.id, job.batch_id, event_type, target[0], now, job_payload(job))

    def batch_event(self, batch: Batch, event_type: EventType, now: datetime, counts: dict[str, int]) -> WebhookEvent | None:
        url, events = batch.webhook_url, batch.webhook_events
        if not url:
            url, events = self._owner_default(batch.owner_id)
        if not url or not subscribed(events, event_type):
            return None
        return self._add(batch.owner_id, None, batch.id, event_type, url, now, batch_payload(batch, counts))

    def prime_owners(self, owner_ids: Iterable[str]) -> None:
        """Load the default webhook targets of these keys in one query (a claim whose batch spans many keys)."""
        missing = sorted({o for o in owner_ids if o not in self._defaults})
        if not missing:
            return
        stmt = select(ApiKey.id, ApiKey.default_webhook_url, ApiKey.default_webhook_events).where(ApiKey.id.in_(missing))
        found = {key_id: (url, events) for key_id, url, events in self.session.execute(stmt).tuples()}
        for owner_id in missing:
            self._defaults[owner_id] = found.get(owner_id, (None, None))

    def _job_target(self, job: Job) -> tuple[str, list[str] | None] | None:
        if job.webhook_url:
            return job.webhook_url, job.webhook_events
        if job.batch_id:
            batch = self._batch(job.batch_id)
            if batch is not None and batch.webhook_url:
                return batch.webhook_url, batch.webhook_events
        url, events = self._owner_default(job.owner_id)
        return (url, events) if url else None

    def _batch(self, batch_id: str) -> Batch | None:
        if batch_id not in self._batches:
            self._batches[batch_id] = self.session.get(Batch, batch_id)
        return self._batches[batch_id]

    def _owner_default(self, owner_id: str) -> tuple[str | None, list[str] | None]:
        """The key's default endpoint and the events it subscribed (None = DEFAULT_EVENT_TYPES)."""
        if owner_id not in self._defaults:
            stmt = select(ApiKey.default_webhook_url, ApiKey.default_webhook_events).where(ApiKey.id == owner_id)
            row = self.session.execute(stmt).first()
            self._defaults[owner_id] = (row[0], row[1]) if row is not None else (None, None)
        return self._defaults[owner_id]

    def _add(self, owner_id: str, job_id: str | None, batch_id: str | None, event_type: EventType, url: str,
             now: datetime, data: dict[str, Any]) -> WebhookEvent:
        row = WebhookEvent(
            id=new_message_id(), owner_id=owner_id, job_id=job_id, batch_id=batch_id, event_type=str(event_type),
            url=url, status="pending", attempts=0, next_attempt_at=now, created_at=now,
            payload={"type": str(event_type), "timestamp": iso(now), "data": data},
        )
        self.session.add(row)
        log.debug("outbox %s %s for job=%s batch=%s", row.id, event_type, job_id, batch_id)
        return row
