"""`/v1/batches`: submit up to `max_batch_items` jobs at once (all or nothing), follow and cancel them.

`GET` answers the per-status counts and, once every job is finished, a signed link to the JSONL results manifest:
`GET /v1/batches/{id}/manifest`, which streams the manifest with image URLs presigned as it is read (see
storage.batches.manifests), for the owner's API key or the link's signature.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from api.deps import (
    ID_PATTERN,
    BatchId,
    CallerDep,
    IdempotencyKey,
    LifecycleDep,
    ServicesDep,
    authenticate,
    bearer,
    reject_unknown_query,
)
from api.errors import ApiError
from api.events.waits import hub_of, open_ready_watch, wait_until
from api.intake.batch_replay import submit_batch_once
from api.intake.bodies import read_batch_body
from api.openapi import batch_body, errors, submission
from api.schemas import BatchesPage, BatchOut
from api.services import Services
from api.views import batch_out
from storage.batches.manifests import CONTENT_TYPE
from storage.records import BatchRecord

MAX_WAIT_SECONDS = 60

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(reject_unknown_query)])


def render(services: Services, batch: BatchRecord) -> BatchOut:
    """The batch as shown: its manifest link once finished, its finish estimate before."""
    eta = services.jobs.batch_finish_estimate(batch.id) if batch.finished_at is None else None
    return batch_out(batch, services.manifests.link(batch), eta)


@router.post("", **submission(BatchOut, "Submit a batch", "batch", batch_body()))
async def create_batch(request: Request, services: ServicesDep, caller: CallerDep,
                       idempotency_key: IdempotencyKey = None) -> Response:
    """A JSON array of jobs, `{"requests": [...], "webhook_url", "webhook_events", "metadata"}`, or JSONL
    (`Content-Type: application/x-ndjson`). Validated as a whole: one bad item is 422 naming its line and
    nothing is created. With an `Idempotency-Key`, sending the same batch again returns the first (200)."""
    body = await read_batch_body(request)
    record, created = await run_in_threadpool(
        submit_batch_once, services, caller.id, body.items, body.lines, body.options, caller.max_active_jobs,
        idempotency_key or None,
    )
    view = batch_out(record) if created else render(services, record)
    return Response(view.model_dump_json(), status_code=202 if created else 200, media_type="application/json")


@router.get("", response_model=BatchesPage, summary="List batches", responses=errors())
def list_batches(
    services: ServicesDep, caller: CallerDep,
    cursor: Annotated[str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BatchesPage:
    """The caller's batches, newest first, each with its per-status counts."""
    records, next_cursor = services.batches.page(caller.id, cursor=cursor, limit=limit)
    records = services.batches.with_counts(records)
    return BatchesPage(data=[batch_out(r) for r in records], next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchOut, summary="Get a batch", responses=errors(404, 429))
async def get_batch(
    request: Request, services: ServicesDep, caller: CallerDep, batch_id: BatchId,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Block up to N s until done")] = 0,
) -> BatchOut:
    """Per-status counts; `manifest_url` once every job is finished. With `wait=N`, answers as soon as the batch
    is finished or after N seconds (woken by its jobs' events, see api.events.waits)."""
    batch = await run_in_threadpool(services.batches.get, batch_id, caller.id)
    if wait and batch.finished_at is None:
        hub = hub_of(request)
        batch = await wait_until(hub, await open_ready_watch(hub, caller.id, batch_ids=[batch_id]),
                                 lambda: services.batches.get(batch_id, caller.id),
                                 lambda b: b.finished_at is not None, wait)
    return await run_in_threadpool(render, services, batch)


@router.post("/{batch_id}/cancel", response_model=BatchOut, summary="Cancel a batch", responses=errors(404, 409))
def cancel_batch(services: ServicesDep, caller: CallerDep, batch_id: BatchId) -> BatchOut:
    """Queued jobs are canceled now, running ones stop at their next step; a finished batch is 409."""
    return render(services, services.batches.cancel(batch_id, caller.id))


@router.delete("/{batch_id}", status_code=204, summary="Erase a finished batch", responses=errors(404, 409))
def delete_batch(lifecycle: LifecycleDep, caller: CallerDep, batch_id: BatchId) -> Response:
    """Erase every job of a finished batch (as `DELETE /v1/jobs/{id}`), its manifest and its metadata. A batch
    with unfinished jobs is 409 `illegal_transition` (cancel it first)."""
    lifecycle.erase_batch(batch_id, caller.id)
    return Response(status_code=204)


@router.get(
    "/{batch_id}/manifest", summary="Download a batch's results manifest (JSONL)", response_class=StreamingResponse,
    responses={200: {"description": "One JSON line per item in submission order, image URLs presigned now",
                     "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
               **errors(404, 409, 429)},
)
def get_manifest(
    services: ServicesDep, batch_id: BatchId,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    expires: Annotated[int | None, Query(ge=0, le=2**40, description="Unix time the link expires")] = None,
    sig: Annotated[str | None, Query(min_length=1, max_length=128, description="The link's signature")] = None,
) -> StreamingResponse:
    """The results manifest of a finished batch, streamed: one line per item (`custom_id`, `job_id`, `status`,
    `result` with image keys and URLs, `error`), its URLs presigned as it is read, so it never hands out an
    expired link. For the owner's API key, or with no key by the signed `manifest_url` of the batch. An
    unfinished batch is 409 `not_finished`."""
    manifests = services.manifests
    if expires is not None and sig is not None and manifests.verify(batch_id, expires, sig):
        batch = services.batches.get(batch_id)
    elif credentials is not None or expires is None or sig is None:
        batch = services.batches.get(batch_id, authenticate(services, credentials).id)
    else:
        raise ApiError(401, "unauthorized", "invalid or expired manifest signature")
    if batch.finished_at is None:
        raise ApiError(409, "not_finished", f"batch {batch_id} is not finished ({batch.status})")
    return StreamingResponse(manifests.lines(batch_id), media_type=CONTENT_TYPE,
                             headers={"Cache-Control": "no-store"})
