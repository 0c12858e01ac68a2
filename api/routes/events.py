"""`GET /v1/jobs/{id}/events`: a job's life as server-sent events, ending after its terminal state.

Events: `status` (the full job, whenever its status changes; the first event is the current state),
`progress` (`{"step", "total"}` while running, at most every `TICK_SECONDS`) and `done` (the final job, with
result URLs or the error), after which the stream ends. A comment line keeps idle connections open. The
stream reads Postgres (the truth) and the ephemeral progress store on a short tick rather than holding a
subscription per client, so each open stream costs a couple of quick reads per second and no thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, JobId, ServicesDep, reject_unknown_query
from api.openapi import errors
from api.routes.jobs import render
from api.services import Services

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(reject_unknown_query)])

TICK_SECONDS = 0.25  # while running: progress is published about this often
QUEUED_TICK_SECONDS = 1.0  # while queued: only the status can change
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 24 * 3600.0


def sse(event: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def job_events(request: Request, services: Services, owner_id: str, job_id: str) -> AsyncIterator[str]:
    """The event stream of one job (the job exists and is the owner's: checked before streaming)."""
    seq = 0
    last_status = None
    last_progress: tuple[int, int] | None = None
    last_sent = time.monotonic()
    started = last_sent
    while time.monotonic() - started < MAX_STREAM_SECONDS:
        job = await run_in_threadpool(services.jobs.get, job_id, owner_id)
        view = await run_in_threadpool(render, services, job, job.status != last_status)
        if job.status != last_status:
            last_status = job.status
            seq += 1
            yield sse("status", view.model_dump_json(), seq)
            last_sent = time.monotonic()
        if job.terminal:
            seq += 1
            yield sse("done", view.model_dump_json(), seq)
            return
        progress = (view.progress.step, view.progress.total) if view.progress else None
        if progress is not None and progress != last_progress and job.status == "running":
            last_progress = progress
            seq += 1
            yield sse("progress", json.dumps({"step": progress[0], "total": progress[1]}), seq)
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(TICK_SECONDS if job.status == "running" else QUEUED_TICK_SECONDS)


@router.get(
    "/{job_id}/events", summary="Stream a job's events (SSE)", response_class=StreamingResponse,
    responses={200: {"description": "`text/event-stream` of `status`, `progress` and `done` events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **errors(404)},
)
async def stream_job_events(request: Request, services: ServicesDep, caller: CallerDep,
                            job_id: JobId) -> StreamingResponse:
    """Server-sent events for one job until it is finished."""
    await run_in_threadpool(services.jobs.get, job_id, caller.id)  # 404 before the stream starts
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(job_events(request, services, caller.id, job_id), media_type="text/event-stream",
                             headers=headers)
