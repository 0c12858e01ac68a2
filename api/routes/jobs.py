"""`/v1/jobs`: submit, read (optionally waiting until done), list with filters and cursors, cancel.

Routes stay thin: bodies are read by `api.intake.bodies`, accepted by `api.intake.submission`, rendered by `api.views`.
Every query is scoped to the caller; another key's job answers 404 like a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import (
    ID_PATTERN,
    CallerDep,
    IdempotencyKey,
    JobId,
    LifecycleDep,
    ServicesDep,
    checked_id,
    reject_unknown_query,
)
from api.errors import validation_error
from api.events.waits import hub_of, open_ready_watch, wait_until
from api.intake.bodies import read_job_body
from api.intake.submission import Submitter
from api.openapi import errors, json_or_multipart_body, submission
from api.schemas import JobOut, JobsPage, Kind
from api.services import Services
from api.views import job_out
from storage.records import JobRecord
from storage.states import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(reject_unknown_query)])

MAX_WAIT_SECONDS = 60


def render(services: Services, job: JobRecord, with_position: bool = True) -> JobOut:
    """The job as shown (progress as the worker last wrote it to the row) with, for a queued job, its queue
    position and estimated start under the scheduling policy, from its queue's shared snapshot (at most a few
    seconds old: one policy walk over the queue per process and interval, not one per request)."""
    if not with_position or job.status != JobStatus.QUEUED:
        return job_out(job, services.presign)
    estimate = services.positions.estimate(job)
    warnings = services.coverage.warnings(job)
    return job_out(job, services.presign, estimate.position, estimate.estimated_start_at, warnings)


@router.post("", **submission(JobOut, "Submit a job", "job", json_or_multipart_body()))
async def create_job(request: Request, services: ServicesDep, caller: CallerDep,
                     idempotency_key: IdempotencyKey = None) -> Response:
    """Submit a `generate`, `edit` or `understand` job (JSON, or multipart with an `image` file part).
    `queue_position` is left out here (counting the queue would cost more than the rest); GET shows it."""
    body = await read_job_body(request)
    submitted = await run_in_threadpool(
        Submitter(services).submit_job, caller.id, body.body, body.image_bytes, idempotency_key or None,
        body.digest(), caller.max_active_jobs,
    )
    view = job_out(submitted.job, services.presign)
    return Response(view.model_dump_json(), status_code=202 if submitted.created else 200,
                    media_type="application/json")


@router.get("", response_model=JobsPage, summary="List jobs", responses=errors())
def list_jobs(
    services: ServicesDep, caller: CallerDep,
    status: JobStatus | None = None, kind: Kind | None = None, batch_id: str | None = None,
    created_after: datetime | None = None, created_before: datetime | None = None,
    cursor: Annotated[str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobsPage:
    """The caller's jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    if created_after and created_after.tzinfo is None or created_before and created_before.tzinfo is None:
        raise validation_error("timestamps need a time zone (e.g. 2026-01-01T00:00:00Z)", "created_after")
    if batch_id is not None and not checked_id(batch_id):
        return JobsPage(data=[], next_cursor=None)
    records, next_cursor = services.jobs.page(
        caller.id, status=status, kind=kind, batch_id=batch_id, created_after=created_after,
        created_before=created_before, cursor=cursor, limit=limit,
    )
    return JobsPage(data=[render(services, r, with_position=False) for r in records], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job", responses=errors(404, 429))
async def get_job(
    request: Request, services: ServicesDep, caller: CallerDep, job_id: JobId,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Block up to N s until done")] = 0,
) -> JobOut:
    """The job; with `wait=N`, answers as soon as it is finished or after N seconds (woken by the job's events,
    see api.events.waits; a wait counts as an open stream: 429 `too_many_streams` past the limits)."""
    job = await run_in_threadpool(services.jobs.get, job_id, caller.id)
    if wait and not job.terminal:
        hub = hub_of(request)
        job = await wait_until(hub, await open_ready_watch(hub, caller.id, job_ids=[job_id]),
                               lambda: services.jobs.get(job_id, caller.id), lambda j: j.terminal, wait)
    return await run_in_threadpool(render, services, job)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job", responses=errors(404, 409))
def cancel_job(services: ServicesDep, caller: CallerDep, job_id: JobId) -> JobOut:
    """A queued job is canceled at once; a running one stops at its next step (`cancel_requested`).
    Canceling a finished job is 409 `illegal_transition`."""
    job = services.jobs.request_cancel(job_id, caller.id)
    return render(services, job)


@router.delete("/{job_id}", status_code=204, summary="Erase a finished job", responses=errors(404, 409))
def delete_job(lifecycle: LifecycleDep, caller: CallerDep, job_id: JobId) -> Response:
    """Delete a finished job's input and result objects and its personal fields (prompt, instruction,
    question, metadata, custom_id, result text, ...); the job stays listed with its status and
    `result.expired: true`. An unfinished job is 409 `illegal_transition` (cancel it first)."""
    lifecycle.erase_job(job_id, caller.id)
    return Response(status_code=204)
