"""Webhook routes: a job's delivery log, replay, endpoints (default, enable) and the signing secret.

Everything is scoped to the caller's key: another key's job, event or endpoint answers 404. Delivery itself
happens in the CPU webhook worker (`workers.webhooks`); these routes only read and adjust the outbox through
`storage.webhooks.store.WebhookStore` and the key's secrets through `storage.keys.KeyStore`. A default URL is
checked by the same SSRF guard as job URLs (422 `unsafe_webhook_url`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, JobId, ServicesDep, WebhooksDep, checked_id
from api.errors import ApiError
from api.openapi import errors
from api.schemas import WebhookEventName
from api.services import Services
from storage.states import DEFAULT_EVENT_TYPES
from storage.webhooks.records import EndpointRecord, EventRecord

router = APIRouter(tags=["webhooks"])

_EVENT_ID = re.compile(r"msg_[0-9A-Za-z]{26}")


class WebhookAttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    response_snippet: str | None = Field(None, description="First 1 KB of the answer")
    error: str | None = None


class WebhookEventOut(BaseModel):
    id: str = Field(description="The `webhook-id` header, stable across retries")
    type: str
    url: str
    status: Literal["pending", "delivered", "failed", "dropped"]
    attempts: int
    next_attempt_at: datetime | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    job_id: str | None = None
    batch_id: str | None = None
    attempt_log: list[WebhookAttemptOut] = Field(default_factory=list)


class WebhookEventsPage(BaseModel):
    data: list[WebhookEventOut]


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    enabled: bool
    is_default: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    created_at: datetime
    last_success_at: datetime | None = None


class WebhookEndpointsPage(BaseModel):
    data: list[WebhookEndpointOut]


class DefaultEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(description="The key's default webhook URL; null clears it", max_length=2048)
    events: list[WebhookEventName] | None = Field(
        None, max_length=6, description="Events sent to the default URL (default: every state change)")


class DefaultEndpointOut(BaseModel):
    url: str | None
    events: list[str]
    endpoint: WebhookEndpointOut | None = None


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="The current `whsec_...` secret: verify `webhook-signature` with it")
    previous_secret_expires_at: datetime | None = Field(
        None, description="Until then the previous secret signs too (a second `v1,` signature)")


def _event_id(event_id: str) -> str:
    if not _EVENT_ID.fullmatch(event_id):
        raise ApiError(404, "not_found", "webhook event not found")
    return event_id


def _endpoint_id(endpoint_id: str) -> str:
    if not checked_id(endpoint_id):
        raise ApiError(404, "not_found", "webhook endpoint not found")
    return endpoint_id.lower()


EventId = Annotated[str, Depends(_event_id)]
EndpointId = Annotated[str, Depends(_endpoint_id)]


@router.get("/v1/jobs/{job_id}/deliveries", response_model=WebhookEventsPage, summary="A job's webhook deliveries",
            responses=errors(404))
def list_deliveries(caller: CallerDep, job_id: JobId, store: WebhooksDep) -> WebhookEventsPage:
    """Every webhook event of the job, oldest first, each with its attempts (status, latency, answer)."""
    return WebhookEventsPage(data=[_event_out(e) for e in store.deliveries(job_id, caller.id)])


@router.post("/v1/webhook-events/{event_id}/replay", status_code=202, response_model=WebhookEventOut,
             summary="Send a webhook event again", responses=errors(404, 409))
def replay_event(caller: CallerDep, event_id: EventId, store: WebhooksDep) -> WebhookEventOut:
    """Queue the event for delivery now, with the same `webhook-id` (409 while its endpoint is disabled)."""
    return _event_out(store.replay(event_id, caller.id))


@router.get("/v1/webhook-endpoints", response_model=WebhookEndpointsPage, summary="List webhook endpoints",
            responses=errors())
def list_endpoints(caller: CallerDep, store: WebhooksDep) -> WebhookEndpointsPage:
    """The URLs this key's events were sent to (and its default), with their enabled state."""
    return WebhookEndpointsPage(data=[_endpoint_out(e) for e in store.endpoints(caller.id)])


@router.put("/v1/webhook-endpoints/default", response_model=DefaultEndpointOut,
            summary="Set the key's default webhook endpoint", responses=errors(422))
def set_default_endpoint(body: DefaultEndpointIn, caller: CallerDep, services: ServicesDep,
                         store: WebhooksDep) -> DefaultEndpointOut:
    """Jobs and batches without their own `webhook_url` send their events here."""
    if body.url is not None:
        services.preparer.check_webhook(body.url, field="url", owner_id=caller.id)
    endpoint = store.set_default(caller.id, body.url, list(body.events) if body.events else None)
    return DefaultEndpointOut(url=body.url, events=_default_events(services, caller.id),
                              endpoint=_endpoint_out(endpoint) if endpoint else None)


@router.post("/v1/webhook-endpoints/{endpoint_id}/enable", response_model=WebhookEndpointOut,
             summary="Re-enable a webhook endpoint", responses=errors(404))
def enable_endpoint(caller: CallerDep, endpoint_id: EndpointId, store: WebhooksDep) -> WebhookEndpointOut:
    """An endpoint disabled by a 410 Gone answer receives new events again."""
    return _endpoint_out(store.enable(endpoint_id, caller.id))


@router.get("/v1/webhook-secret", response_model=WebhookSecretOut, summary="The webhook signing secret")
def get_secret(caller: CallerDep, services: ServicesDep) -> WebhookSecretOut:
    """The secret the `webhook-signature` header is computed with."""
    return _secret_out(services, caller.id)


@router.post("/v1/webhook-secret/rotate", response_model=WebhookSecretOut, summary="Rotate the signing secret")
def rotate_secret(caller: CallerDep, services: ServicesDep) -> WebhookSecretOut:
    """A new secret; the old one keeps signing (a second signature) for `UNIPIC_WEBHOOK_SECRET_OVERLAP_SECONDS`."""
    services.keys.rotate_webhook_secret(caller.id, services.settings.webhook_secret_overlap_seconds)
    return _secret_out(services, caller.id)


def _secret_out(services: Services, owner_id: str) -> WebhookSecretOut:
    key = services.keys.get(owner_id)
    live = key.previous_webhook_secret is not None and len(key.webhook_secrets()) > 1
    return WebhookSecretOut(secret=key.webhook_secret,
                            previous_secret_expires_at=key.previous_secret_expires_at if live else None)


def _default_events(services: Services, owner_id: str) -> list[str]:
    return [str(e) for e in services.keys.get(owner_id).default_webhook_events or DEFAULT_EVENT_TYPES]


def _event_out(e: EventRecord) -> WebhookEventOut:
    return WebhookEventOut(
        id=e.id, type=e.event_type, url=e.url, status=e.status,
        attempts=e.attempts, next_attempt_at=e.next_attempt_at, created_at=e.created_at,
        delivered_at=e.delivered_at, job_id=e.job_id, batch_id=e.batch_id,
        attempt_log=[WebhookAttemptOut(**vars(a)) for a in e.attempt_log],
    )


def _endpoint_out(e: EndpointRecord) -> WebhookEndpointOut:
    return WebhookEndpointOut(id=e.id, url=e.url, enabled=e.enabled, is_default=e.is_default,
                              disabled_at=e.disabled_at, disabled_reason=e.disabled_reason,
                              created_at=e.created_at, last_success_at=e.last_success_at)
