"""`/healthz` (the process answers), `/readyz` (database, Redis and object store reachable), `/metrics`
(public, or behind `UNIPIC_METRICS_TOKEN`).

Readiness checks run in parallel threads with a short timeout each, so a hung dependency makes the probe
fail fast (503 with the failing check named) instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, reject_unknown_query
from api.errors import ApiError
from api.schemas import HealthOut
from api.services import Services
from storage.db import ping

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"], dependencies=[Depends(reject_unknown_query)])

CHECK_TIMEOUT_SECONDS = 3.0


def _database(services: Services) -> None:
    ping(services.engine)


def _redis(services: Services) -> None:
    services.ephemeral.ping()


def _objects(services: Services) -> None:
    services.objects.ping()


CHECKS: dict[str, Callable[[Services], None]] = {"database": _database, "redis": _redis, "objects": _objects}


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


async def _run(name: str, check: Callable[[Services], None], services: Services) -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(check, services), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the reason is reported
        log.warning("readiness check %s failed: %s", name, exc)
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/readyz", response_model=HealthOut, summary="Readiness",
            responses={503: {"model": HealthOut, "description": "A dependency is unreachable"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    names = list(CHECKS)
    results = await asyncio.gather(*(_run(n, CHECKS[n], services) for n in names))
    checks = dict(zip(names, results, strict=True))
    ready = all(r == "ok" for r in results)
    body = HealthOut(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503,
                        headers={} if ready else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    """Prometheus text. With `UNIPIC_METRICS_TOKEN` set, only for `Authorization: Bearer <that token>`."""
    token = request.app.state.services.settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                         f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "metrics need the metrics token", headers={"WWW-Authenticate": "Bearer"})
    payload = request.app.state.metrics.render()
    return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")
