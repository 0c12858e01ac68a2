"""`/v1/batches`: submit up to `max_batch_items` jobs at once (all or nothing), follow and cancel them.

`GET` answers the per-status counts and, once every job is finished, a link to the JSONL results manifest,
which it writes on first request if no one has yet (see storage.manifests).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api.bodies import read_batch_body
from api.deps import ID_PATTERN, BatchId, CallerDep, ServicesDep, reject_unknown_query
from api.openapi import batch_body, errors
from api.schemas import BatchesPage, BatchOut
from api.services import Services
from api.submission import Submitter
from api.views import batch_out
from storage.manifests import write_manifest
from storage.records import BatchRecord

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(reject_unknown_query)])


def render(services: Services, batch: BatchRecord) -> BatchOut:
    """The batch as shown; writes the manifest first if the batch is finished and has none."""
    key = batch.manifest_key
    if batch.finished_at is not None and key is None:
        key = write_manifest(services.batches, services.objects, batch.id, services.settings.presign_expiry_seconds)
    return batch_out(batch, services.presign(key) if key else None)


@router.post(
    "", status_code=202, response_model=BatchOut, summary="Submit a batch",
    responses=errors(400, 404, 413, 415), openapi_extra=batch_body(),
)
async def create_batch(request: Request, services: ServicesDep, caller: CallerDep) -> BatchOut:
    """A JSON array of jobs, `{"requests": [...], "webhook_url", "webhook_events", "metadata"}`, or JSONL
    (`Content-Type: application/x-ndjson`). Validated as a whole: one bad item is 422 naming its line and
    nothing is created."""
    body = await read_batch_body(request)
    record = await run_in_threadpool(
        Submitter(services).submit_batch, caller.id, body.items, body.lines, body.options, caller.max_active_jobs
    )
    return batch_out(record)


@router.get("", response_model=BatchesPage, summary="List batches", responses=errors())
def list_batches(
    services: ServicesDep, caller: CallerDep,
    cursor: Annotated[str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BatchesPage:
    """The caller's batches, newest first (counts are in `GET /v1/batches/{id}`)."""
    records, next_cursor = services.batches.list(caller.id, cursor=cursor, limit=limit)
    return BatchesPage(data=[batch_out(r) for r in records], next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchOut, summary="Get a batch", responses=errors(404))
def get_batch(services: ServicesDep, caller: CallerDep, batch_id: BatchId) -> BatchOut:
    """Per-status counts; `manifest_url` once every job is finished."""
    return render(services, services.batches.get(batch_id, caller.id))


@router.post("/{batch_id}/cancel", response_model=BatchOut, summary="Cancel a batch", responses=errors(404, 409))
def cancel_batch(services: ServicesDep, caller: CallerDep, batch_id: BatchId) -> BatchOut:
    """Queued jobs are canceled now, running ones stop at their next step; a finished batch is 409."""
    return render(services, services.batches.cancel(batch_id, caller.id))
