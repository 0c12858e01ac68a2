"""The HTTP application: `create_app(settings)` wires services, routes, middleware and error handling.

Nothing is built at import time. `create_app` builds the process's services (engine, stores, Celery sender)
eagerly so a misconfiguration fails at start, and disposes them at shutdown; uvicorn runs
`uvicorn --factory api.app:create_app_from_env`. This package never imports torch, the model or the workers
(import-linter enforces it): jobs reach the GPU workers only as Celery messages sent by task name.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import auth_first
from api.docs import install_docs
from api.draining import drain_on_stop
from api.errors import install_error_handlers
from api.events.hub import EventHub
from api.events.reconciler import JobReconciler
from api.gateway import routes as worker_gateway
from api.gateway.heartbeats import HeartbeatBatcher
from api.intake.bodies import BodyLimit
from api.metrics import Metrics, MetricsMiddleware
from api.openai import errors as openai_errors
from api.openai import routes as openai_compat
from api.openapi import install_openapi
from api.routes import batches, events, health, jobs, objects, uploads, webhooks
from api.services import Services
from api.status import routes as ui
from storage.settings import Settings, get_settings
from storage.tracing import setup_from_settings as setup_tracing

log = logging.getLogger(__name__)

DESCRIPTION = """Serve Skywork UniPic: text-to-image (`generate`), image editing (`edit`) and image understanding
(`understand`) as queued jobs. Authenticate with `Authorization: Bearer <key>`. Errors are
`{"error": {"code", "message", "field"}}` with stable codes."""
JSON_SLACK_BYTES = 1024 * 1024
MIN_BATCH_BODY_BYTES = 64 * 1024 * 1024


def body_limits(settings: Settings) -> dict[str, int]:
    """Largest accepted body per path prefix: an image (base64 in JSON) plus room for the rest."""
    job = settings.max_upload_bytes * 4 // 3 + JSON_SLACK_BYTES
    return {
        "/v1/batches": max(MIN_BATCH_BODY_BYTES, job),
        "/v1/uploads": settings.max_upload_bytes,
        "/v1/objects": settings.max_upload_bytes,
        "": job,
    }


def create_app(settings: Settings) -> FastAPI:
    """A fresh application for these settings."""
    services = Services.build(settings)
    metrics = Metrics()
    metrics.watch_jobs(lambda: services.jobs.counts_by_status())
    metrics.watch_fleet(services.fleet.snapshot)

    hub = EventHub.from_settings(settings)  # one Redis subscription per process (api.events.hub)
    if services.publisher is not None:  # its own commits' queue wake-ups count at once (storage.jobs.publishing)
        services.publisher.listen_locally(hub.heard_locally)
    reconciler = JobReconciler(services.jobs.get_many, settings.events_reconcile_seconds)
    heartbeats = HeartbeatBatcher(services.registry, min(2.0, settings.heartbeat_seconds / 5))  # api.gateway.heartbeats

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.open()
        await hub.start()
        with drain_on_stop(hub.drain):  # SIGTERM ends held streams and long-polls first (api.draining)
            yield
        await reconciler.stop()
        await hub.stop()
        heartbeats.stop()
        services.close()

    app = FastAPI(title="unipic-queue", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # api.docs serves both from packaged assets (no CDN)
    app.state.services = services
    app.state.metrics = metrics
    app.state.event_hub = hub
    app.state.reconciler = reconciler
    app.state.heartbeats = heartbeats
    for module in (jobs, events, batches, uploads, objects, webhooks, health, ui, openai_compat, worker_gateway):
        app.include_router(module.router)
    install_error_handlers(app)
    auth_first.install(app)  # 401 before any complaint about the body
    openai_errors.install(app)  # OpenAI's namespace answers in OpenAI's error shape
    install_openapi(app)
    install_docs(app)
    limits = body_limits(settings)
    app.add_middleware(BodyLimit, limit_for=lambda path: _limit_for(limits, path),
                       render=openai_errors.render_for_path)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    log.info("API ready: database %s, broker %s, objects %s", _safe(settings.database_url),
             _safe(settings.broker_url), settings.storage_url)
    return app


def _limit_for(limits: dict[str, int], path: str) -> int:
    for prefix, limit in limits.items():
        if prefix and path.startswith(prefix):
            return limit
    return limits[""]


def _safe(url: str) -> str:
    """A URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def create_app_from_env() -> FastAPI:
    """The app for the environment's `UNIPIC_*` settings (uvicorn's `--factory` entry)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    setup_tracing(settings, "unipic-api")  # each uvicorn process (no-op unless UNIPIC_OTEL_ENDPOINT is set)
    app = create_app(settings)
    # what the process holds now lives as long as it does: out of the collector's full passes, each of which
    # stopped every request for its length (150,000 objects: 0.08 s on the 2-core CPU, idle; see
    # `workers.startup.freeze_startup_heap` for what that did to the workers)
    gc.collect()
    gc.freeze()
    return app
