"""One job's life as server-sent events: `status` on every status change, `progress`, then `done`.

The stream reads the job row (Postgres, the truth) once when it opens and again when its `Watch`
(`api.events.hub`) wakes it: on a status or cancel event, or a resync (Redis came back, or `api.events.reconciler`'s slow
batched check found the row ahead of what the stream showed), so a lost message only delays it. Progress events carry their step and total, committed
by the worker, so they are sent without a read. In poll mode (no Redis, or `UNIPIC_EVENTS_MODE=poll`) the watch
never wakes and the timer is the old tick (`TICK_SECONDS` running, `QUEUED_TICK_SECONDS` queued). A queued job's
position comes from the process's shared per-queue snapshot (`api.events.queue_positions`), never counted per stream.
Knows nothing of routes or of Redis.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from api.events.hub import Wake, Watch
from api.events.queue_positions import QueuePositions
from api.events.reconciler import JobReconciler, row_state
from api.schemas import JobOut
from api.services import Services
from api.views import job_out
from storage.records import JobRecord
from storage.states import JobStatus

TICK_SECONDS = 0.25  # poll mode, running: progress is written about this often
QUEUED_TICK_SECONDS = 1.0  # poll mode, queued: only the status can change
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 24 * 3600.0


def sse(event: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


class KeepAlive:
    """Waits on a watch for something to read, sending a keep-alive comment after every `KEEPALIVE_SECONDS`
    with nothing sent (so proxies and clients keep a quiet stream open); `wake` is what ended the last wait."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.last_sent = time.monotonic()
        self.wake = Wake()

    def sent(self) -> None:
        self.last_sent = time.monotonic()

    async def until(self, reconcile_at: float) -> AsyncIterator[str]:
        """Keep-alive comments until an event, a resync or a dropped watch arrives, or `reconcile_at` passes."""
        while True:
            now = time.monotonic()
            self.wake = await self.watch.wait(min(reconcile_at - now, self.last_sent + KEEPALIVE_SECONDS - now))
            if self.wake.dropped or not self.wake.empty or time.monotonic() >= reconcile_at:
                return
            yield ": keep-alive\n\n"
            self.sent()


@dataclass(frozen=True)
class Timing:
    """How long a stream sleeps between reads when nothing wakes it."""

    push: bool
    reconcile_seconds: float

    def timeout(self, status: str) -> float:
        if not self.push:
            return TICK_SECONDS if status == JobStatus.RUNNING else QUEUED_TICK_SECONDS
        return self.reconcile_seconds * random.uniform(0.75, 1.5)  # jitter, not crypto

    def job_timeout(self, status: str) -> float:
        """A pushed job stream never reads on a timer: `api.events.reconciler` re-checks it in batches."""
        return float("inf") if self.push else self.timeout(status)


def render_job(services: Services, positions: QueuePositions, job: JobRecord) -> JobOut:
    """The job as shown, a queued one with its position and start estimate from the shared snapshot."""
    if job.status != JobStatus.QUEUED:
        return job_out(job, services.presign)
    estimate = positions.estimate(job)
    warnings = services.coverage.warnings(job)
    return job_out(job, services.presign, estimate.position, estimate.estimated_start_at, warnings)


async def job_events(services: Services, positions: QueuePositions, watch: Watch, timing: Timing,
                     job: JobRecord, reconciler: JobReconciler) -> AsyncIterator[str]:
    """The events of one job, from `job` (read after `watch` was registered, so nothing falls between)."""
    current = [job]  # what the stream last showed, for the reconciler
    if timing.push:
        reconciler.register(watch, job.id, lambda: row_state(current[0]))
    try:
        async for chunk in _job_events(services, positions, watch, timing, current):
            yield chunk
    finally:
        reconciler.unregister(watch)
        watch.close()


async def _job_events(services: Services, positions: QueuePositions, watch: Watch, timing: Timing,
                      current: list[JobRecord]) -> AsyncIterator[str]:
    seq = 0
    last_status: str | None = None
    last_progress: tuple[int, int] | None = None
    started = time.monotonic()
    quiet = KeepAlive(watch)
    job = current[0]
    with watch:
        while time.monotonic() - started < MAX_STREAM_SECONDS:
            if job.status != last_status:
                view = await run_in_threadpool(render_job, services, positions, job)
                last_status = job.status
                seq += 1
                yield sse("status", view.model_dump_json(), seq)
                quiet.sent()
                if job.terminal:
                    seq += 1
                    yield sse("done", view.model_dump_json(), seq)
                    return
            progress = (job.progress_step or 0, job.progress_total) if job.progress_total else None
            if progress is not None and progress != last_progress and job.status == JobStatus.RUNNING:
                last_progress = progress
                seq += 1
                yield sse("progress", json.dumps({"step": progress[0], "total": progress[1]}), seq)
                quiet.sent()
            # until something to read: an event, a resync, the reconciliation time
            async for chunk in quiet.until(time.monotonic() + timing.job_timeout(job.status)):
                yield chunk
            wake = quiet.wake
            if wake.dropped:
                return
            if _progress_only(job, wake):
                job = _with_progress(job, wake.events[-1])
            else:
                job = await run_in_threadpool(services.jobs.get, job.id)
            current[0] = job


def _progress_only(job: JobRecord, wake: Wake) -> bool:
    """Only progress of a job already known to be running: no need to read the row."""
    return (job.status == JobStatus.RUNNING and bool(wake.events) and not wake.resync
            and all(e.get("type") == "progress" and e.get("status") == JobStatus.RUNNING for e in wake.events))


def _with_progress(job: JobRecord, event: dict[str, object]) -> JobRecord:
    """The job with the step/total a committed progress event carried (no read needed)."""
    step, total = event.get("step"), event.get("total")
    if not isinstance(step, int) or not isinstance(total, int):
        return job
    return dataclasses.replace(job, progress_step=step, progress_total=total)
