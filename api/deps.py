"""Dependencies for routes, as `Annotated` aliases: the process's services, the stores a route needs on its own
(each a field of `api.services.Services`, built once per process) and the authenticated caller.

`Caller` resolves `Authorization: Bearer <key>` against `storage.keys.KeyStore` (through `api.auth.KeyCache`;
keys are stored hashed; a revoked or unknown key is 401 `unauthorized`) and charges the key's rate limit. Every
route that touches jobs or batches takes a `Caller` and scopes its queries by `caller.id`. The cheap
dependencies are `async` so they run on the event loop, not in the thread pool; `authenticate` may query the
database and stays sync.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.events.queue_positions import QueuePositions
from api.services import Services
from storage.fleet.registry import WorkerRegistry
from storage.lifecycle.store import Lifecycle
from storage.webhooks.store import WebhookStore

ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ID = re.compile(ID_PATTERN.strip("^$"))
IdempotencyKey = Annotated[str | None, Header(max_length=200)]  # a submission sent again makes nothing new
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer upk_...`")


@dataclass(frozen=True)
class Caller:
    """The authenticated API key: its id owns jobs and batches; optional per-key limits."""

    id: str
    name: str
    rate_limit_per_minute: int | None = None
    max_active_jobs: int | None = None


async def reject_unknown_query(request: Request) -> None:
    """422 for query parameters the route does not declare (a typo like `?stauts=` must not pass silently).
    On a route that needs a key, an anonymous or invalid caller hears 401 first: nothing about the request's
    shape is answered before authentication."""
    route = request.scope.get("route")
    allowed = _declared_query(route)
    for name in request.query_params:
        if name not in allowed:
            if _needs_key(route):
                await _require_key(request)
            raise ApiError(422, "validation_error", f"unknown query parameter {name[:100]!r}", name[:100])


def _needs_key(route: object) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and _calls(dependant, authenticate)


def _calls(dependant: Any, function: Any) -> bool:
    return any(sub.call is function or _calls(sub, function) for sub in dependant.dependencies)


async def _require_key(request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer API key")
    services: Services = request.app.state.services
    if await run_in_threadpool(services.key_cache.authenticate, token.strip()) is None:
        raise _unauthorized("invalid or revoked API key")


def _declared_query(route: object) -> frozenset[str]:
    cached = getattr(route, "_unipic_query_names", None)
    if cached is None:
        dependant = getattr(route, "dependant", None)
        cached = frozenset(_query_names(dependant)) if dependant is not None else frozenset()
        with contextlib.suppress(AttributeError):
            route._unipic_query_names = cached  # type: ignore[attr-defined]
    return cached


def _query_names(dependant: Any) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_lifecycle(services: ServicesDep) -> Lifecycle:
    return services.lifecycle


async def get_webhooks(services: ServicesDep) -> WebhookStore:
    return services.webhooks


async def get_registry(services: ServicesDep) -> WorkerRegistry:
    return services.registry


async def get_positions(services: ServicesDep) -> QueuePositions:
    return services.positions


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
RegistryDep = Annotated[WorkerRegistry, Depends(get_registry)]
PositionsDep = Annotated[QueuePositions, Depends(get_positions)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """The caller for a valid, unrevoked key (401 otherwise), after charging its rate limit (429)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing bearer API key")
    record = services.key_cache.authenticate(credentials.credentials)
    if record is None:
        raise _unauthorized("invalid or revoked API key")
    caller = Caller(
        id=record.id, name=record.name, rate_limit_per_minute=record.rate_limit_per_minute,
        max_active_jobs=record.max_active_jobs,
    )
    services.admission.check_rate(caller.id, caller.rate_limit_per_minute)
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


def checked_id(value: str) -> bool:
    """Whether `value` looks like one of our ids (a UUID); anything else can't name a row."""
    return bool(_ID.fullmatch(value))


async def _job_id(job_id: str) -> str:
    if not checked_id(job_id):
        raise ApiError(404, "not_found", "job not found")
    return job_id.lower()


async def _batch_id(batch_id: str) -> str:
    if not checked_id(batch_id):
        raise ApiError(404, "not_found", "batch not found")
    return batch_id.lower()


JobId = Annotated[str, Depends(_job_id)]
BatchId = Annotated[str, Depends(_batch_id)]
