"""The worker gateway: `/v1/worker/...`, how a remote worker with only an HTTPS URL and a worker token runs jobs.

Every call is authenticated by a worker token (`api.gateway.auth`) and goes through `storage.jobs.store.JobStore` with
the lease token as the fence, exactly as a direct worker's calls do, so a stale or partitioned worker can never
overwrite a newer claim:

- `claim` (long-poll up to `wait_seconds`): `JobStore.claim_next` on the queues the token allows (its kinds, the
  resolution classes that fit its max pixels) of the model the worker holds (`model`: none for the default), so the scheduling policy is the same as for Celery workers. The
  answer is the batch: per job its id, lease token, kind, params and seed, its input as a presigned GET URL and
  its results as presigned PUT URLs for exactly the keys its lease may write (`api.gateway.result_checks.result_keys`:
  `results/{job}/{lease}/...`), expiring no later than the lease. A claim carries the worker's `claim_id`; a
  retry with the same id (its first answer was lost) gets the jobs that claim already took, not a second batch
  (only a retry looks the id up: the first send says `first_try`). Each job also carries an opaque `tenant`
  tag of its key, its priority and its creation time, so a continuous worker's step policy shares steps across
  keys as a direct worker's does; `queue` narrows a claim to one queue and `skip_owners_of` (jobs the worker
  holds) to keys none of them belongs to, or to such a key's jobs above every priority they have there: a full
  running set's newcomer claim, which waits as an observer of the queue's wake-ups (it takes none from a claim
  that would claim the job);
- `renew` (fresh result URLs for the renewed leases), `progress` (bounded by the job's own step count: 422
  `invalid_progress` otherwise; `progress-many`: several jobs in one request and one transaction, each fenced by its
  own lease), `cancel-requests`: leases, progress and the owner's cancel requests of held jobs;
- `cancels` (long-poll up to `wait_seconds`): the worker's running jobs whose owners asked to cancel them, but
  those it says it knows already (`known`); it answers at once when there are any, else when a cancel hint names the
  worker (`api.events.hub`), so a gateway worker keeps one poll in flight instead of reading cancel requests
  every sampling step. `watching` says whether the gateway hears every cancel (its event subscription is live and
  trusted): while false it answers at once and the worker reads as before;
- `complete`: the declared objects (keys, sizes, sha256) are checked (`api.gateway.result_checks.verify_results`: the
  lease's own keys, fully decoded, the format and size the job asked for) before the job is marked succeeded;
  an invalid result is 422 with the refusal's code and the job stays running under the worker's lease; a retry
  of a `complete` that succeeded (its answer was lost on the way back) is ok again, not 409;
- `fail` (a job's own failure, or `canceled` to acknowledge a cancel request), `release` (hand jobs back: they
  are queued again and get a fresh message), `heartbeat` (the worker's entry in `GET /v1/workers`, transport
  "remote"; beats are batched, one transaction per interval for all workers: `api.gateway.heartbeats`).
An idle `claim` costs the database nothing between wake-ups: it waits on its queues' wake-ups (`api.events.hub`)
and reads Postgres only when woken or on a slow safety tick, skipping queues another claim just found empty.
A job claimed under another token, or by no one, is 404 whatever the lease token; a stale lease is 409.
Knows nothing of the model; no SQL here.
"""

from __future__ import annotations

import hashlib
import random
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import RegistryDep, ServicesDep
from api.errors import ApiError
from api.events.hub import EventHub
from api.gateway.auth import WorkerCaller, WorkerDep
from api.gateway.heartbeats import HeartbeatBatcher
from api.gateway.result_checks import DeclaredObject, InvalidResult, result_keys, verify_results
from api.services import Services
from storage.errors import ForeignResultKeys
from storage.jobs.params import progress_total
from storage.objects.base import lease_of_result_key
from storage.records import Claim, JobRecord
from storage.routing import RESOLUTION_CLASSES, queue_name, served_model
from storage.settings import MODEL_NAME
from storage.states import JobErrorCode, JobStatus

router = APIRouter(prefix="/v1/worker", tags=["worker gateway"])

MAX_WAIT_SECONDS = 30.0
# without wake-ups (embedded or poll mode, Redis down) an idle long-poll looks again after 20 ms, doubling up to
# the safety tick: a worker asking right after a batch sees new work within tens of ms, an idle one costs little
POLL_SECONDS = 0.02
DISCONNECT_CHECK_SECONDS = 1.0  # how often a held cancel poll looks whether its worker is still there
SETTLE_SECONDS = 1.0  # the longest even a claim that would not wait waits for another claim's read of its queue
WORKER_NAME = r"^[A-Za-z0-9._:@-]{1,100}$"
CLAIM_ID = r"^[A-Za-z0-9-]{8,64}$"
FAIL_CODES = {JobErrorCode.INVALID_INPUT, JobErrorCode.MODEL_ERROR, JobErrorCode.OUT_OF_MEMORY,
              JobErrorCode.TIMEOUT, JobErrorCode.CANCELED}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimIn(_Body):
    worker: Annotated[str, Field(pattern=WORKER_NAME, description="This worker's name (host:pid)")]
    max_items: Annotated[int, Field(ge=1, le=256)] = 1
    max_batch_pixels: Annotated[int, Field(ge=1)] = 4096 * 4096
    max_image_pixels: Annotated[int | None, Field(ge=1)] = None
    kinds: list[str] | None = None
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)] = 20.0
    model: Annotated[str | None, Field(pattern=MODEL_NAME, description=(
        "The model this worker holds (UNIPIC_MODEL_NAME): only its jobs are claimed; none: the default"))] = None
    claim_id: Annotated[str | None, Field(pattern=CLAIM_ID, description=(
        "The worker's id for this claim (a uuid per claim, reused when it retries the same claim): a retry "
        "returns the jobs the first attempt took"))] = None
    first_try: bool = Field(default=False, description=(
        "True on the first send of this `claim_id`: no earlier try can have taken jobs, so the gateway does not "
        "look the id up (an idle claim costs the database nothing); retries send false (or omit it)"))
    queue: Annotated[str | None, Field(max_length=200, description=(
        "Claim from this one queue only (one the token serves): a running set asking for compatible work"))] = None
    skip_owners_of: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=256, description=(
        "Jobs this worker holds: claim only a job of a key none of them belongs to, or of such a key above every "
        "priority they have there (a full running set taking a newcomer over its cap, `workers.runner.continuous`); "
        "the keys stay the gateway's to know"))] = []


class ClaimRef(_Body):
    job_id: Annotated[str, Field(max_length=64)]
    lease_token: Annotated[str, Field(max_length=64)]


class ClaimedJob(BaseModel):
    job_id: str
    lease_token: str
    kind: str
    params: dict[str, Any]
    seed: int | None
    compat_key: str
    queue: str
    pixels: int
    tenant: str = Field(description="An opaque tag of the job's key (equal for one key's jobs): the step policy "
                                    "shares a running set's steps across keys without the worker knowing them")
    priority: int
    created_at: datetime
    attempts: int
    input_key: str | None
    input_url: str | None
    result_urls: dict[str, str]


class ClaimOut(BaseModel):
    worker_id: str
    lease_seconds: float
    jobs: list[ClaimedJob]


class ClaimsIn(_Body):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    claims: Annotated[list[ClaimRef], Field(max_length=256)]


class CancelsIn(_Body):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    known: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=256, description=(
        "Jobs whose cancel this worker heard already (it is stopping them): not answered again"))] = []
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, description=(
        "How long to wait for a cancel request (0: answer at once, e.g. to learn `watching`)"))] = 20.0


class CancelsOut(BaseModel):
    cancel_requested: list[str] = Field(description="This worker's running jobs whose owners asked to cancel them")
    watching: bool = Field(description=(
        "The gateway heard every cancel request while it held this poll (and would hold the next one): a worker "
        "with such a poll in flight need not read cancel requests itself. False: it answered without waiting "
        "(events not live, or not for long enough after a Redis restart); read them yourself for now"))


class HeldOut(BaseModel):
    held: list[str]
    cancel_requested: list[str] = []
    result_urls: dict[str, dict[str, str]] = {}  # renew: fresh PUT URLs (key -> URL) per held job


class StepReport(ClaimRef):
    step: Annotated[int, Field(ge=0)]
    total: Annotated[int, Field(ge=0)]


class ProgressIn(StepReport):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]


class ProgressManyIn(_Body):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    reports: Annotated[list[StepReport], Field(max_length=256)]


class ObjectIn(_Body):
    key: Annotated[str, Field(max_length=1024)]
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class CompleteIn(ClaimRef):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    objects: Annotated[list[ObjectIn], Field(max_length=64)]
    timings: dict[str, float] = {}
    model_id: Annotated[str | None, Field(max_length=200)] = None
    model_revision: Annotated[str | None, Field(max_length=200)] = None


class FailIn(ClaimRef):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    code: str
    message: Annotated[str, Field(max_length=4000)] = ""


class DoneOut(BaseModel):
    ok: bool


class ReleasedOut(BaseModel):
    released: int


class HeartbeatIn(_Body):
    worker: Annotated[str, Field(pattern=WORKER_NAME)]
    hostname: Annotated[str, Field(max_length=200)] = ""
    pid: int = 0
    device: Annotated[str | None, Field(max_length=50)] = None
    model_id: Annotated[str | None, Field(max_length=200)] = None
    kinds: list[str] = []
    max_pixels: int | None = None
    max_batch: int | None = None
    model_name: Annotated[str | None, Field(pattern=MODEL_NAME)] = None  # the model it holds; none: the default
    checkpoint_hash: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")] = None
    batches: Annotated[int, Field(ge=0)] = 0
    jobs: Annotated[int, Field(ge=0)] = 0
    start: bool = False  # the worker (re)starts: register it anew
    stopping: bool = False
    health: dict[str, Any] | None = None


class HeartbeatOut(BaseModel):
    worker_id: str
    lease_seconds: float
    heartbeat_seconds: float
    kinds: list[str]
    max_pixels: int


# ---- claim ----------------------------------------------------------------------------------------------------
@router.post("/claim", response_model=ClaimOut, summary="Claim a batch (long-poll)")
async def claim(body: ClaimIn, request: Request, services: ServicesDep, caller: WorkerDep) -> ClaimOut:
    """The next batch of a queue this token may serve, by the scheduling policy; waits up to `wait_seconds`."""
    worker_id = caller.worker_id(body.worker)
    queues = allowed_queues(caller, body.kinds, body.max_image_pixels, _model(services, body.model))
    lease = services.settings.lease_seconds
    if body.claim_id is not None and not body.first_try:  # a retry whose answer was lost: the same jobs again
        again = await run_in_threadpool(services.jobs.claimed_by, body.claim_id, worker_id)
        if again:
            jobs = await run_in_threadpool(_claimed_jobs, services, caller, again)
            return ClaimOut(worker_id=worker_id, lease_seconds=lease, jobs=jobs)
    if body.queue is not None:
        if body.queue not in queues:
            raise ApiError(403, "queue_not_allowed", f"this worker token (or the worker's limits) does not serve "
                           f"queue {body.queue!r}", "queue")
        queues = [body.queue]
    above = (await run_in_threadpool(services.jobs.owners_held, body.skip_owners_of, worker_id)
             if body.skip_owners_of else {})
    claims = await _wait_for_claims(request, services, queues, worker_id, body, above)
    jobs = await run_in_threadpool(_claimed_jobs, services, caller, claims) if claims else []
    return ClaimOut(worker_id=worker_id, lease_seconds=lease, jobs=jobs)


async def _wait_for_claims(request: Request, services: Services, queues: list[str], worker_id: str,
                           body: ClaimIn, above: dict[str, int]) -> list[Claim]:
    """Claim now, else wait for a wake-up of one of `queues` (`api.events.hub`: published after the commit that
    made a job claimable there) and claim again, until `wait_seconds`. The database is read only when woken, on
    the slow jittered safety tick (`gateway_claim_tick_seconds`: a lost message costs at most that), and then
    only for queues no other claim of this process has just found empty. Without a live subscription (embedded
    mode, poll mode, Redis down) it polls, 20 ms doubling to the tick. A newcomer claim takes a held key's job only
    above the priority the worker holds of it (`above`: key -> that priority), so it tells the hub nothing of the
    queues it found without such a job (they may hold the held keys' backlog) and waits as an observer: it hears
    every wake-up and takes none from a claim that would claim that job."""
    hub: EventHub = request.app.state.event_hub
    tick = services.settings.gateway_claim_tick_seconds
    deadline = time.monotonic() + body.wait_seconds
    pause = POLL_SECONDS
    if body.wait_seconds > 0:
        await hub.ready(min(1.0, body.wait_seconds))  # so no wake-up published after the first look is missed
    # registered before the first look: nothing falls in between
    with hub.queue_waiter(queues, observer=bool(above)) as waiter:
        while True:
            look = hub.begin_look(queues, tick)
            claims: list[Claim] = []
            empty, took = list(look.queues), None
            try:
                if look.queues:
                    claims, empty, took = await run_in_threadpool(_claim_once, services, look.queues, worker_id, body,
                                                                  above)
            finally:
                hub.end_look(look, [] if above else empty, took)
            if not claims and await hub.settled(look, max(deadline - time.monotonic(), SETTLE_SECONDS)):
                continue  # another claim's read of a queue this one left to it found work: read it now
            left = deadline - time.monotonic()
            if claims or left <= 0 or hub.closing or await request.is_disconnected():
                return claims
            if hub.live:
                await waiter.wait(min(left, tick * random.uniform(0.75, 1.25)))
            else:  # polling; the waiter still hears the process stopping
                await waiter.wait(min(left, pause * random.uniform(0.75, 1.25)))
                pause = min(tick, pause * 2)
            if hub.closing:  # this process stops: the worker's next claim goes to another
                return []


def allowed_queues(caller: WorkerCaller, kinds: list[str] | None, max_image_pixels: int | None,
                   model: str | None = None) -> list[str]:
    """The GPU queues of `model` (a routing key; None: the default) whose every job this token (and the worker's
    own limit) allows."""
    limit = min(caller.token.max_pixels, max_image_pixels or caller.token.max_pixels)
    served = [k for k in caller.token.kinds if kinds is None or k in kinds]
    return [queue_name(kind, name, model) for kind in served for name, side in RESOLUTION_CLASSES
            if side * side <= limit]


def _model(services: Services, name: str | None) -> str | None:
    """The routing key of the model a worker says it holds, as this deployment names its default."""
    return served_model(name or "", services.settings.default_model)


def _claim_once(services: Services, queues: list[str], worker_id: str, body: ClaimIn,
                above: dict[str, int]) -> tuple[list[Claim], list[str], str | None]:
    """The first batch found, the queues in random order (no queue starves another); the queues read empty; and
    the queue the batch came from."""
    empty: list[str] = []
    for queue in random.sample(queues, len(queues)):
        claims = services.jobs.claim_next(queue, worker_id, services.settings.lease_seconds, body.max_items,
                                          body.max_batch_pixels, claim_id=body.claim_id, above=above)
        if claims:
            return claims, empty, queue
        empty.append(queue)
    return [], empty, None


def tenant_tag(owner_id: str) -> str:
    """An opaque tag of a key for remote workers: equal for one key's jobs, and not the key's id."""
    return hashlib.sha256(f"unipic-tenant\0{owner_id}".encode()).hexdigest()[:16]


def _claimed_jobs(services: Services, caller: WorkerCaller, claims: list[Claim]) -> list[ClaimedJob]:
    tokens = {c.job_id: c.lease_token for c in claims}
    jobs = services.jobs.get_many(list(tokens))
    refused = [j for j in jobs if not caller.token.allows(j.kind, _image_pixels(j))]
    if refused:  # cannot happen with allowed_queues; never hand a job past the token's limits
        _release(services, [Claim(j.id, tokens[j.id]) for j in refused])
    out = []
    for job in (j for j in jobs if j not in refused):
        expiry = services.settings.presign_expiry_seconds
        input_url = services.objects.presign_get(job.input_key, expiry)[0] if job.input_key else None
        puts = _result_urls(services, job, tokens[job.id])
        out.append(ClaimedJob(job_id=job.id, lease_token=tokens[job.id], kind=job.kind, params=job.params,
                              seed=job.seed, compat_key=job.compat_key, queue=job.queue, pixels=job.pixels,
                              tenant=tenant_tag(job.owner_id), priority=job.priority, created_at=job.created_at,
                              attempts=job.attempts, input_key=job.input_key, input_url=input_url,
                              result_urls=puts))
    return out


def _result_urls(services: Services, job: JobRecord, lease: str) -> dict[str, str]:
    """Presigned PUTs for exactly the lease's result keys, expiring no later than the lease (renew hands out
    fresh ones), so a lease that ends leaves no URL that outlives it by more than one lease length."""
    expiry = max(1, min(services.settings.presign_expiry_seconds, int(services.settings.lease_seconds)))
    return {key: services.objects.presign_put(key, expiry)[0] for key in result_keys(job, lease)}


def _image_pixels(job: JobRecord) -> int:
    if job.kind == "understand":
        return job.pixels
    return int(job.params.get("width", 0)) * int(job.params.get("height", 0))


# ---- leases, progress, cancels --------------------------------------------------------------------------------
@router.post("/renew", response_model=HeldOut, summary="Renew leases")
def renew(body: ClaimsIn, services: ServicesDep, caller: WorkerDep) -> HeldOut:
    """Extend the leases still held; the ones missing from `held` were lost (stop working on them). Each held job
    gets fresh result URLs, valid for the renewed lease."""
    claims = _owned(services, caller, body.claims)
    held = services.jobs.renew(claims, services.settings.lease_seconds)
    cancels = services.jobs.cancel_requested_ids([c.job_id for c in held])
    jobs = {j.id: j for j in services.jobs.get_many([c.job_id for c in held])}
    urls = {c.job_id: _result_urls(services, jobs[c.job_id], c.lease_token) for c in held if c.job_id in jobs}
    return HeldOut(held=[c.job_id for c in held], cancel_requested=sorted(cancels), result_urls=urls)


@router.post("/cancel-requests", response_model=HeldOut, summary="Cancel requests of held jobs")
def cancel_requests(body: ClaimsIn, services: ServicesDep, caller: WorkerDep) -> HeldOut:
    claims = _owned(services, caller, body.claims)
    return HeldOut(held=[c.job_id for c in claims],
                   cancel_requested=sorted(services.jobs.cancel_requested_ids([c.job_id for c in claims])))


@router.post("/cancels", response_model=CancelsOut, summary="Wait for cancel requests of this worker's jobs")
async def cancels(body: CancelsIn, request: Request, services: ServicesDep, caller: WorkerDep) -> CancelsOut:
    """The worker's running jobs with a cancel request (but `known`), as soon as there are any, waiting up to
    `wait_seconds` on the hub's cancel hints; it reads Postgres once, then only when a hint names this worker."""
    hub: EventHub = request.app.state.event_hub
    worker_id = caller.worker_id(body.worker)
    known = set(body.known)

    def read() -> list[str]:
        return sorted(services.jobs.cancel_requested_of(worker_id) - known)

    deadline = time.monotonic() + body.wait_seconds
    if body.wait_seconds > 0:
        await hub.ready(min(1.0, body.wait_seconds))
    with hub.cancel_poll(worker_id) as poll:  # registered before the read: a cancel after it wakes the poll
        found = await run_in_threadpool(read)
        watching = hub.trusted
        while not found and watching and (left := deadline - time.monotonic()) > 0:
            reason = await poll.wait(min(left, DISCONNECT_CHECK_SECONDS))
            if reason is None:  # a worker that went away (killed) does not hold a server's shutdown for long
                if await request.is_disconnected():
                    break
                continue
            if reason == "superseded":  # the worker's newer poll covers its jobs
                break
            if reason == "closing":  # this process stops: the worker's next poll goes to another
                watching = False
                break
            found = await run_in_threadpool(read)
            watching = hub.trusted
    return CancelsOut(cancel_requested=found, watching=watching)


@router.post("/progress-many", response_model=HeldOut, summary="Report the progress of several jobs")
def progress_many(body: ProgressManyIn, services: ServicesDep, caller: WorkerDep) -> HeldOut:
    """The progress of several held jobs in one request and one transaction (a running set's items advance
    together): each as `progress` checks it (422 `invalid_progress` for a report past its job's own step count),
    each row fenced by its own lease. `held` lists the jobs written; one whose lease is gone, or that was not
    claimed under this token, is left out and changes nothing, without failing the others."""
    jobs = {j.id: j for j in services.jobs.get_many([r.job_id for r in body.reports])}
    reports = []
    for report in body.reports:
        job = jobs.get(report.job_id)
        if job is None or not caller.owns(job.worker_id):
            continue
        if (wrong := _wrong_progress(job, report)) is not None:
            raise ApiError(422, "invalid_progress", f"job {job.id}: {wrong}", "reports")
        reports.append((Claim(job.id, report.lease_token), report.step, report.total))
    return HeldOut(held=sorted(services.jobs.set_progress_many(reports)))


@router.post("/progress", response_model=DoneOut, summary="Report progress")
def progress(body: ProgressIn, services: ServicesDep, caller: WorkerDep) -> DoneOut:
    """Progress of a held job, in its own steps: `total` must be the job's step count (`steps`, or
    `max_new_tokens` to understand) and `step` at most that (422 `invalid_progress` otherwise)."""
    claim, job = _held(services, caller, body)
    if (wrong := _wrong_progress(job, body)) is not None:
        field = "step" if body.total == progress_total(job.kind, job.params) else "total"
        raise ApiError(422, "invalid_progress", wrong, field)
    return DoneOut(ok=services.jobs.set_progress(claim, body.step, body.total))


# ---- finishing ------------------------------------------------------------------------------------------------
@router.post("/complete", response_model=DoneOut, summary="Complete a job")
def complete(body: CompleteIn, services: ServicesDep, caller: WorkerDep) -> DoneOut:
    """Mark a job succeeded once its uploaded results check out (422 otherwise; 409 if the lease is stale). A
    retry of a `complete` that already succeeded (its answer was lost) is answered ok again."""
    try:
        claim, job = _held(services, caller, body)
    except ApiError as exc:
        if exc.status == 409 and _completed_by(services, body):
            return DoneOut(ok=True)
        raise
    declared = [DeclaredObject(o.key, o.size, o.sha256) for o in body.objects]
    try:
        text = verify_results(services.objects, job, claim.lease_token, declared)
        ok = services.jobs.complete(claim, [d.key for d in declared], text, body.timings, body.model_id,
                                    body.model_revision)
    except InvalidResult as exc:
        raise ApiError(422, exc.code, str(exc), "objects") from None
    except ForeignResultKeys as exc:
        raise ApiError(422, exc.code, exc.message, "objects") from None
    if not ok and not _completed_by(services, body):
        raise _stale(body.job_id)
    return DoneOut(ok=True)


def _completed_by(services: Services, body: CompleteIn) -> bool:
    """Whether the job succeeded with exactly these objects, all under this lease's own keys: only this lease's
    `complete` can have recorded them (the keys name the lease), so this is a repeat, not a stale attempt."""
    jobs = services.jobs.get_many([body.job_id])
    keys = [o.key for o in body.objects]
    if not jobs or jobs[0].status != JobStatus.SUCCEEDED or sorted(jobs[0].result_keys or []) != sorted(keys):
        return False
    return all(lease_of_result_key(k) == (body.job_id, body.lease_token) for k in keys)


@router.post("/fail", response_model=DoneOut, summary="Fail a job (or acknowledge its cancel)")
def fail(body: FailIn, services: ServicesDep, caller: WorkerDep) -> DoneOut:
    try:
        code = JobErrorCode(body.code)
    except ValueError:
        code = None
    if code not in FAIL_CODES:
        raise ApiError(422, "validation_error", f"code must be one of {sorted(c.value for c in FAIL_CODES)}",
                       "code")
    claim, _ = _held(services, caller, body)
    if code is JobErrorCode.CANCELED:
        ok = services.jobs.cancel_running(claim)
    else:
        ok = services.jobs.fail(claim, code, body.message or code.value)
    if not ok:
        raise _stale(body.job_id)
    return DoneOut(ok=True)


@router.post("/release", response_model=ReleasedOut, summary="Hand jobs back to the queue")
def release(body: ClaimsIn, services: ServicesDep, caller: WorkerDep) -> ReleasedOut:
    """Running -> queued (attempts unchanged) and a fresh message for each, so any worker may take them."""
    return ReleasedOut(released=_release(services, _owned(services, caller, body.claims)))


def _release(services: Services, claims: list[Claim]) -> int:
    released = services.jobs.release(claims)
    back = [j.ref for j in services.jobs.get_many([c.job_id for c in claims]) if j.status == JobStatus.QUEUED]
    services.enqueuer.enqueue(back)
    return released


# ---- heartbeat ------------------------------------------------------------------------------------------------
@router.post("/heartbeat", response_model=HeartbeatOut, summary="Register or heartbeat a remote worker")
def heartbeat(body: HeartbeatIn, request: Request, services: ServicesDep, registry: RegistryDep,
              caller: WorkerDep) -> HeartbeatOut:
    """Register (first beat, `start`) or beat: a known worker's beats are batched (`api.gateway.heartbeats`), written
    with the others in one transaction per interval."""
    worker_id = caller.worker_id(body.worker)
    kinds = [k for k in body.kinds if k in caller.token.kinds] or list(caller.token.kinds)
    max_pixels = min(body.max_pixels or caller.token.max_pixels, caller.token.max_pixels)
    batcher: HeartbeatBatcher = request.app.state.heartbeats
    if body.start or body.stopping:  # written directly, in order with the registration or the stop
        batcher.forget(worker_id)
    if body.start or not (batcher.beat(worker_id, body.batches, body.jobs, body.health)
                          or registry.heartbeat(worker_id, body.batches, body.jobs, body.health)):
        model = _model(services, body.model_name)
        registry.register(worker_id, body.hostname or "remote", body.pid, body.device, body.model_id, kinds,
                          max_pixels, body.max_batch, allowed_queues(caller, kinds, max_pixels, model),
                          transport="remote", model_name=model, checkpoint_hash=body.checkpoint_hash)
        registry.heartbeat(worker_id, body.batches, body.jobs, body.health)
    if body.stopping:
        registry.stop(worker_id)
    else:
        batcher.known(worker_id)
    settings = services.settings
    return HeartbeatOut(worker_id=worker_id, lease_seconds=settings.lease_seconds,
                        heartbeat_seconds=settings.heartbeat_seconds, kinds=kinds, max_pixels=max_pixels)


# ---- who holds what -------------------------------------------------------------------------------------------
def _owned(services: Services, caller: WorkerCaller, refs: list[ClaimRef]) -> list[Claim]:
    """The claims among `refs` whose job was claimed under this token (others are silently not held)."""
    jobs = {j.id: j for j in services.jobs.get_many([r.job_id for r in refs])}
    return [Claim(r.job_id, r.lease_token) for r in refs
            if r.job_id in jobs and caller.owns(jobs[r.job_id].worker_id)]


def _held(services: Services, caller: WorkerCaller, ref: ClaimRef) -> tuple[Claim, JobRecord]:
    """The job, when it is running under this token (404 otherwise) with this lease token (409 otherwise)."""
    jobs = services.jobs.get_many([ref.job_id])
    if not jobs or not caller.owns(jobs[0].worker_id):
        raise ApiError(404, "not_found", "job not found (not claimed under this worker token)")
    job = jobs[0]
    if job.status != JobStatus.RUNNING or job.lease_token != ref.lease_token:
        raise _stale(ref.job_id)
    return Claim(job.id, ref.lease_token), job


def _wrong_progress(job: JobRecord, report: StepReport) -> str | None:
    """Why a progress report does not fit its job (`total` must be the job's own step count, `step` at most that),
    or None when it fits."""
    total = progress_total(job.kind, job.params)
    if report.total != total or report.step > total:
        return f"progress must be step <= total = {total} (this job's steps), got {report.step}/{report.total}"
    return None


def _stale(job_id: str) -> ApiError:
    return ApiError(409, "lease_lost", f"job {job_id}: this lease is no longer held")
