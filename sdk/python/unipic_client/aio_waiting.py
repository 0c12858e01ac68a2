"""Waiting, for asyncio: the async twin of `waiting` (SSE with long-poll fallback; batch results as items
finish). The rules (deadlines, fallback, final errors) are the same; see `waiting`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from unipic_client.errors import WaitTimeout, error_of
from unipic_client.models import TERMINAL_STATUSES, Batch, Job, Progress
from unipic_client.waiting import (
    BATCH_POLL_S,
    FINAL_HTTP,
    LONG_POLL_S,
    PROGRESS_POLL_S,
    SSE_READ_S,
    ProgressHook,
    deadline_of,
    remaining,
)

if TYPE_CHECKING:
    from unipic_client.aio import AsyncClient


class AsyncDeadlineStream(httpx.AsyncByteStream):
    """A response body that awaits `check` (the wait's deadline) before handing on each chunk it reads."""

    def __init__(self, inner: httpx.AsyncByteStream, check: Callable[[], Awaitable[None]]) -> None:
        self.inner, self.check = inner, check

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            await self.check()
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class AsyncJobWaiter:
    def __init__(self, client: AsyncClient, job_id: str, timeout: float | None,
                 on_progress: ProgressHook | None) -> None:
        self.client, self.job_id, self.timeout = client, job_id, timeout
        self.on_progress = on_progress
        self.deadline = deadline_of(timeout)
        self.last: Job | None = None

    async def run(self, sse: bool = True) -> Job:
        if sse:
            done = await self._over_sse()
            if done is not None:
                return done
        return await self._long_poll()

    async def _over_sse(self) -> Job | None:
        timeout = httpx.Timeout(10.0, read=min(SSE_READ_S, remaining(self.deadline)) or 0.001)
        try:
            async with aconnect_sse(self.client.http, "GET", f"v1/jobs/{self.job_id}/events",
                                    timeout=timeout) as source:
                answer = source.response
                if answer.status_code in FINAL_HTTP:
                    await answer.aread()
                    raise error_of(answer)
                if answer.status_code != 200:
                    return None
                assert isinstance(answer.stream, httpx.AsyncByteStream)
                answer.stream = AsyncDeadlineStream(answer.stream, self._check_deadline)
                return await self._events(source.aiter_sse())
        except (httpx.TransportError, SSEError):  # no stream (or not an event stream): long polling instead
            await self._check_deadline()
            return None

    async def _events(self, events: AsyncIterator[ServerSentEvent]) -> Job | None:
        async for event in events:
            if event.event in ("status", "done"):
                self.last = Job.model_validate_json(event.data)
                self._report(self.last.progress)
                if event.event == "done":
                    return self.last
            elif event.event == "progress" and self.last is not None:
                self._report(Progress.model_validate_json(event.data))
            await self._check_deadline()
        return None

    async def _long_poll(self) -> Job:
        while True:
            hold = min(PROGRESS_POLL_S if self.on_progress else LONG_POLL_S, remaining(self.deadline))
            self.last = await self.client.get_job(self.job_id, wait=round(hold, 2) or None)
            self._report(self.last.progress)
            if self.last.status in TERMINAL_STATUSES:
                return self.last
            await self._check_deadline()

    def _report(self, progress: Progress | None) -> None:
        if self.on_progress is not None and self.last is not None:
            self.on_progress(self.last, progress)

    async def _check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            last = self.last or await self.client.get_job(self.job_id)
            raise WaitTimeout(last, self.timeout or 0.0)


class AsyncBatchFollower:
    def __init__(self, client: AsyncClient, batch: Batch, timeout: float | None) -> None:
        self.client, self.batch, self.timeout = client, batch, timeout
        self.deadline = deadline_of(timeout)
        self.seen: set[str] = set()

    @classmethod
    async def start(cls, client: AsyncClient, batch_id: str, timeout: float | None) -> AsyncBatchFollower:
        return cls(client, await client.get_batch(batch_id), timeout)

    async def results(self) -> AsyncIterator[Job]:
        pause = BATCH_POLL_S[0]
        while True:
            if self.batch.counts.finished > len(self.seen) or self.batch.done:
                for status in sorted(TERMINAL_STATUSES):
                    async for job in self.client.iter_jobs(batch_id=self.batch.id, status=status, limit=200):
                        if job.id not in self.seen:
                            self.seen.add(job.id)
                            yield job
            if self.batch.done and len(self.seen) >= self.batch.counts.finished:
                return
            if time.monotonic() >= self.deadline:
                raise WaitTimeout(self.batch, self.timeout or 0.0)
            await asyncio.sleep(min(pause, remaining(self.deadline)))
            pause = min(pause * 2, BATCH_POLL_S[1])
            self.batch = await self.client.get_batch(self.batch.id)
