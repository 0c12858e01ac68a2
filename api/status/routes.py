"""The read-only status page `GET /ui` (server-rendered Jinja2, no front-end build) and `GET /v1/workers`.

Auth, by design: without a key the page shows only aggregates that reveal no one's work (queue depth per queue,
jobs per status, live workers with host and pid), unless `UNIPIC_UI_PUBLIC=false`, when it shows nothing
before sign-in. With a key it also shows that key's recent jobs (with result thumbnails) and
batches. A key is given once as `/ui?key=upk_...`: it is checked, stored in an HttpOnly, SameSite=Strict cookie
scoped to `/ui` (Secure over https), and the browser is redirected to `/ui` so the key leaves the address bar
and history; `/ui/logout` forgets it. The page refreshes itself with a meta refresh: every 5 s while work is
queued or running, else every 30 s.

The queue figures come from `storage.status.queries.StatusQueries` and the workers from
`storage.fleet.registry` (both built once, in `api.services.Services`); everything the caller owns goes through the stores and `api.views`, like the JSON
routes. No SQL here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.deps import CallerDep, ServicesDep
from api.services import Services
from api.status.panels import operations_context
from api.views import job_out
from storage.fleet.registry import WorkerRecord
from storage.routing import DEFAULT_MODEL_ALIAS
from storage.states import ACTIVE_STATUSES

COOKIE = "unipic_ui_key"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
REFRESH_S = 5  # while anything is queued or running
IDLE_REFRESH_S = 30  # otherwise: result thumbnails are not fetched again every few seconds for nothing
RECENT_JOBS = 12
RECENT_BATCHES = 5

router = APIRouter()
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def status_page(request: Request, services: ServicesDep, key: str | None = None) -> Response:
    """The status page; `?key=` signs in (cookie) and redirects to the bare URL."""
    if key is not None:
        return _sign_in(request, services, key)
    caller = services.keys.authenticate(request.cookies.get(COOKIE, ""))
    context = _aggregates(services)
    if caller is None and not services.settings.ui_public:  # UNIPIC_UI_PUBLIC=false: nothing before sign-in
        context.update(queues=[], counts={}, workers=[], unserved=[])  # no queue names either
    busy = any(context["counts"].get(status) for status in ACTIVE_STATUSES)
    context.update(caller=caller, refresh_s=REFRESH_S if busy else IDLE_REFRESH_S, now=datetime.now(UTC),
                   signed_out=request.query_params.get("signed_out") is not None)
    if caller is not None:
        context.update(_owned(services, caller.id))
    context.update(operations_context(services, caller.id if caller else None, services.settings.ui_public))
    html = _templates.get_template("ui.html").render(**context)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/ui/logout", include_in_schema=False)
def sign_out() -> Response:
    response = RedirectResponse("/ui?signed_out=1", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/v1/workers", tags=["workers"])
def list_workers(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Live workers (heartbeat within three heartbeat intervals): device, model, kinds, work done."""
    return {"data": [_worker_view(w) for w in _live_workers(services)]}


# ---- sign-in --------------------------------------------------------------------------------------------------
def _sign_in(request: Request, services: ServicesDep, key: str) -> Response:
    record = services.keys.authenticate(key) if key else None
    if record is None:
        response = RedirectResponse("/ui?signed_out=1", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


# ---- read model -----------------------------------------------------------------------------------------------
def _aggregates(services: Services) -> dict[str, Any]:
    """What anyone may see: queue depths, jobs per status, live workers."""
    queues = services.status.active_by_queue()
    live = _live_workers(services)
    served = {q for w in live for q in w.queues}
    return {
        "queues": sorted(queues.items()),
        "unserved": sorted(q for q, depth in queues.items() if depth.get("queued") and q not in served),
        "counts": services.jobs.counts_by_status(),
        "workers": [_worker_view(w) for w in live],
    }


def _owned(services: Services, owner_id: str) -> dict[str, Any]:
    """The caller's recent jobs (as the API shows them) and recent batches with counts."""
    jobs, _ = services.jobs.page(owner_id, limit=RECENT_JOBS)
    batch_rows, _ = services.batches.page(owner_id, limit=RECENT_BATCHES)
    batches = [services.batches.get(b.id, owner_id) for b in batch_rows]
    return {
        "jobs": [_job_view(job_out(job, services.presign).model_dump(mode="json")) for job in jobs],
        "batches": [_batch_view(b) for b in batches],
    }


def _live_workers(services: Services) -> list[WorkerRecord]:
    return services.registry.live(stale_after_seconds=3 * services.settings.heartbeat_seconds)


def _worker_view(w: WorkerRecord) -> dict[str, Any]:
    return {
        "id": w.id, "hostname": w.hostname, "pid": w.pid, "device": w.device, "model_id": w.model_id,
        "model": w.model_name or DEFAULT_MODEL_ALIAS, "checkpoint_hash": w.checkpoint_hash,
        "kinds": w.kinds, "max_pixels": w.max_pixels, "max_batch": w.max_batch, "queues": w.queues,
        "started_at": w.started_at.isoformat(), "last_heartbeat_at": w.last_heartbeat_at.isoformat(),
        "batches_served": w.batches_served, "jobs_served": w.jobs_served, "transport": w.transport,
        "card_fit": (w.health or {}).get("card_fit"),  # a cuda worker's choice from its free memory (issue 20)
        "heartbeat_age_s": round((datetime.now(UTC) - _aware(w.last_heartbeat_at)).total_seconds(), 1),
    }


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    params = job.get("params") or {}
    progress = job.get("progress") or {}
    total = progress.get("total") or 0
    job["summary"] = params.get("prompt") or params.get("instruction") or params.get("question") or ""
    job["percent"] = int(100 * (progress.get("step") or 0) / total) if total else 0
    job["thumbs"] = [img["url"] for img in ((job.get("result") or {}).get("images") or [])]
    return job


def _batch_view(batch: Any) -> dict[str, Any]:
    counts = dict(batch.counts)
    done = sum(n for status, n in counts.items() if status not in ACTIVE_STATUSES)
    return {"id": batch.id, "status": batch.status, "total": batch.total, "counts": counts, "done": done,
            "percent": int(100 * done / batch.total) if batch.total else 100}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
