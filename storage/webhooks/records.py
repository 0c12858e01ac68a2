"""The webhook store's records: detached, frozen views of outbox events, attempts and endpoints.

`EventRecord`, `AttemptRecord` and `EndpointRecord` are what the API shows (delivery log, endpoints);
`ClaimedEvent` and `AttemptOutcome` are what the delivering worker leases and reports back. Plain data: no
sessions, no HTTP; `storage.webhooks.store.WebhookStore` builds and consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


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


@dataclass(frozen=True)
class ClaimedEvent:
    """An event leased to a worker for one attempt; `attempt` is the fencing token (attempts after claim)."""

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
