"""Server-sent events: `GET /v1/jobs/{id}/events` and `GET /v1/batches/{id}/events`.

Job streams send `status` (the full job, on every status change; the first event is the current state),
`progress` (`{"step", "total"}` while running) and `done` (the final job), then end. Batch streams send `counts`
(the batch, whenever its counts change), one `item` per finished job (its manifest line: job id, custom_id,
status, result URLs or error) and `done` (the batch with its manifest URL), then end. A comment line keeps idle
connections open. How a stream learns of changes is `api.events.hub` (one Redis subscription per process; polling
without Redis); what it sends is `api.events.job_stream` / `api.events.batch_stream`. Each stream counts against the key's and
the process's open-stream limits (429 `too_many_streams`). The watch is registered before the row is read, and
the 404 check is that read, so nothing falls between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import BatchId, CallerDep, JobId, PositionsDep, ServicesDep, reject_unknown_query
from api.events.batch_stream import batch_events
from api.events.hub import Watch
from api.events.job_stream import Timing, job_events
from api.events.waits import hub_of, open_ready_watch
from api.openapi import errors

router = APIRouter(dependencies=[Depends(reject_unknown_query)])

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DOC = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


def timing_of(request: Request) -> Timing:
    hub = hub_of(request)
    return Timing(push=hub.push, reconcile_seconds=request.app.state.services.settings.events_reconcile_seconds)


async def _guarded(watch: Watch, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Release the watch however the stream ends (finished, client gone, cancelled before its first event)."""
    try:
        async for chunk in events:
            yield chunk
    finally:
        watch.close()


@router.get(
    "/v1/jobs/{job_id}/events", summary="Stream a job's events (SSE)", response_class=StreamingResponse,
    tags=["jobs"],
    responses={200: {"description": "`text/event-stream` of `status`, `progress` and `done` events", **SSE_DOC},
               **errors(404, 429)},
)
async def stream_job_events(request: Request, services: ServicesDep, positions: PositionsDep, caller: CallerDep,
                            job_id: JobId) -> StreamingResponse:
    """Server-sent events for one job until it is finished."""
    watch = await open_ready_watch(hub_of(request), caller.id, job_ids=[job_id])
    try:
        job = await run_in_threadpool(services.jobs.get, job_id, caller.id)  # 404 before the stream starts
    except BaseException:
        watch.close()
        raise
    events = job_events(services, positions, watch, timing_of(request), job,
                        request.app.state.reconciler)
    return StreamingResponse(_guarded(watch, events), media_type="text/event-stream", headers=HEADERS)


@router.get(
    "/v1/batches/{batch_id}/events", summary="Stream a batch's events (SSE)", response_class=StreamingResponse,
    tags=["batches"],
    responses={200: {"description": "`text/event-stream` of `counts`, `item` and `done` events", **SSE_DOC},
               **errors(404, 429)},
)
async def stream_batch_events(request: Request, services: ServicesDep, caller: CallerDep,
                              batch_id: BatchId) -> StreamingResponse:
    """Server-sent events for one batch: counts, each item as it finishes, then the manifest."""
    watch = await open_ready_watch(hub_of(request), caller.id, batch_ids=[batch_id])
    try:
        batch = await run_in_threadpool(services.batches.get, batch_id, caller.id)
    except BaseException:
        watch.close()
        raise
    events = batch_events(services, watch, timing_of(request), batch)
    return StreamingResponse(_guarded(watch, events), media_type="text/event-stream", headers=HEADERS)
