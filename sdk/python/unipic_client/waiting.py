"""Waiting, synchronously: one job over server-sent events (long polling as the fallback), and a batch's
results streamed back as its items finish.

Owns the deadlines, the SSE event handling (`status`, `progress`, `done`; the wire format is httpx-sse's) and
the fallback rule: a stream that cannot be opened or breaks falls back to `GET /v1/jobs/{id}?wait=N`; only a
404 or an auth error is final. The deadline is checked on every chunk the stream delivers, keep-alive comments
included (`DeadlineStream`), so a wait ends on time while the server keeps a quiet stream open. The batch
follower reads the batch's counts and lists newly finished jobs only when they grew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx
from httpx_sse import ServerSentEvent, SSEError, connect_sse

from unipic_client.errors import WaitTimeout, error_of
from unipic_client.models import TERMINAL_STATUSES, Batch, Job, Progress

if TYPE_CHECKING:
    from unipic_client.client import Client

LONG_POLL_S = 30.0  # the server holds a GET ?wait= up to 60 s
PROGRESS_POLL_S = 2.0  # long polling when the caller wants progress: progress is not a "done" event
SSE_READ_S = 30.0  # the server sends a keep-alive comment every 15 s
BATCH_POLL_S = (0.25, 2.0)  # from, growing to
FINAL_HTTP = frozenset({401, 403, 404})

ProgressHook = Callable[[Job, Progress | None], None]
C = TypeVar("C")  # the client a wait reads through: `Client` or `AsyncClient`


def deadline_of(timeout: float | None) -> float:
    return time.monotonic() + timeout if timeout is not None else float("inf")


def remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


class DeadlineStream(httpx.SyncByteStream):
    """A response body that runs `check` (the wait's deadline) before handing on each chunk it reads."""

    def __init__(self, inner: httpx.SyncByteStream, check: Callable[[], None]) -> None:
        self.inner, self.check = inner, check

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.check()
            yield chunk

    def close(self) -> None:
        self.inner.close()


class WaitState(Generic[C]):
    """What a wait for one job knows, sync or async alike: the deadline, the last job seen, the progress hook,
    and what each SSE event or long-poll answer means. `JobWaiter` and `AsyncJobWaiter` only do the I/O."""

    def __init__(self, client: C, job_id: str, timeout: float | None, on_progress: ProgressHook | None) -> None:
        self.client, self.job_id, self.timeout = client, job_id, timeout
        self.on_progress = on_progress
        self.deadline = deadline_of(timeout)
        self.last: Job | None = None

    def sse_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=min(SSE_READ_S, remaining(self.deadline)) or 0.001)

    def poll_wait(self) -> float | None:
        """The `?wait=` of the next long poll: short when the caller wants progress, never past the deadline."""
        return round(min(PROGRESS_POLL_S if self.on_progress else LONG_POLL_S, remaining(self.deadline)), 2) or None

    def polled(self, job: Job) -> bool:
        """Take a long poll's answer; True when the job is finished."""
        self.last = job
        self._report(job.progress)
        return job.status in TERMINAL_STATUSES

    def take(self, event: ServerSentEvent) -> Job | None:
        """Take one SSE event; the finished job on `done`."""
        if event.event in ("status", "done"):
            self.last = Job.model_validate_json(event.data)
            self._report(self.last.progress)
            if event.event == "done":
                return self.last
        elif event.event == "progress" and self.last is not None:
            self._report(Progress.model_validate_json(event.data))
        return None

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def _report(self, progress: Progress | None) -> None:
        if self.on_progress is not None and self.last is not None:
            self.on_progress(self.last, progress)


class JobWaiter(WaitState["Client"]):
    """Waits for one job; `run()` returns the finished job or raises `WaitTimeout` / `ApiError`."""

    def run(self, sse: bool = True) -> Job:
        if sse:
            done = self._over_sse()
            if done is not None:
                return done
        return self._long_poll()

    def _over_sse(self) -> Job | None:
        try:
            with connect_sse(self.client.http, "GET", f"v1/jobs/{self.job_id}/events",
                             timeout=self.sse_timeout()) as source:
                answer = source.response
                if answer.status_code in FINAL_HTTP:
                    answer.read()
                    raise error_of(answer)
                if answer.status_code != 200:
                    return None
                assert isinstance(answer.stream, httpx.SyncByteStream)
                answer.stream = DeadlineStream(answer.stream, self._check_deadline)
                return self._events(source.iter_sse())
        except (httpx.TransportError, SSEError):  # no stream (or not an event stream): long polling instead
            self._check_deadline()
            return None

    def _events(self, events: Iterator[ServerSentEvent]) -> Job | None:
        for event in events:
            done = self.take(event)
            if done is not None:
                return done
            self._check_deadline()
        return None

    def _long_poll(self) -> Job:
        while True:
            job = self.client.get_job(self.job_id, wait=self.poll_wait())
            if self.polled(job):
                return job
            self._check_deadline()

    def _check_deadline(self) -> None:
        if self.expired():
            raise WaitTimeout(self.last or self.client.get_job(self.job_id), self.timeout or 0.0)


class FollowState:
    """What following a batch knows, sync or async alike: the batch as last read, the jobs already handed out,
    the deadline and the growing pause between reads. `BatchFollower` and `AsyncBatchFollower` do the I/O."""

    def __init__(self, batch: Batch, timeout: float | None) -> None:
        self.batch, self.timeout = batch, timeout
        self.deadline = deadline_of(timeout)
        self.seen: set[str] = set()
        self.pause = BATCH_POLL_S[0]

    def grew(self) -> bool:
        """More jobs finished than were handed out (or the batch is done): list the finished ones."""
        return self.batch.counts.finished > len(self.seen) or self.batch.done

    def complete(self) -> bool:
        return self.batch.done and len(self.seen) >= self.batch.counts.finished

    def fresh(self, job: Job) -> bool:
        """True the first time a job is seen."""
        if job.id in self.seen:
            return False
        self.seen.add(job.id)
        return True

    def next_pause(self) -> float:
        """Seconds to sleep before reading the batch again; raises `WaitTimeout` past the deadline."""
        if time.monotonic() >= self.deadline:
            raise WaitTimeout(self.batch, self.timeout or 0.0)
        pause, self.pause = self.pause, min(self.pause * 2, BATCH_POLL_S[1])
        return min(pause, remaining(self.deadline))


class BatchFollower(FollowState):
    """Follows a batch until every item is finished, yielding each finished job once."""

    def __init__(self, client: Client, batch_id: str, timeout: float | None = None,
                 on_update: Callable[[Batch], None] | None = None) -> None:
        super().__init__(client.get_batch(batch_id), timeout)
        self.client, self.batch_id, self.on_update = client, batch_id, on_update

    def results(self) -> Iterator[Job]:
        while True:
            if self.on_update is not None:
                self.on_update(self.batch)
            if self.grew():
                yield from self._newly_finished()
            if self.complete():
                return
            time.sleep(self.next_pause())
            self.batch = self.client.get_batch(self.batch_id)

    def _newly_finished(self) -> Iterator[Job]:
        for status in sorted(TERMINAL_STATUSES):
            for job in self.client.iter_jobs(batch_id=self.batch_id, status=status, limit=200):
                if self.fresh(job):
                    yield job
