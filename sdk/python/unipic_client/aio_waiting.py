"""Waiting, for asyncio: the async twin of `waiting` (SSE with long-poll fallback; batch results as items
finish). The rules (deadlines, fallback, final errors) are the same; see `waiting`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from unipic_client.errors import WaitTimeout, error_of
from unipic_client.models import TERMINAL_STATUSES, Batch, Job
from unipic_client.waiting import FINAL_HTTP, FollowState, WaitState

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


class AsyncJobWaiter(WaitState["AsyncClient"]):
    async def run(self, sse: bool = True) -> Job:
        if sse:
            done = await self._over_sse()
            if done is not None:
                return done
        return await self._long_poll()

    async def _over_sse(self) -> Job | None:
        try:
            async with aconnect_sse(self.client.http, "GET", f"v1/jobs/{self.job_id}/events",
                                    timeout=self.sse_timeout()) as source:
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
            done = self.take(event)
            if done is not None:
                return done
            await self._check_deadline()
        return None

    async def _long_poll(self) -> Job:
        while True:
            job = await self.client.get_job(self.job_id, wait=self.poll_wait())
            if self.polled(job):
                return job
            await self._check_deadline()

    async def _check_deadline(self) -> None:
        if self.expired():
            raise WaitTimeout(self.last or await self.client.get_job(self.job_id), self.timeout or 0.0)


class AsyncBatchFollower(FollowState):
    def __init__(self, client: AsyncClient, batch: Batch, timeout: float | None) -> None:
        super().__init__(batch, timeout)
        self.client = client

    @classmethod
    async def start(cls, client: AsyncClient, batch_id: str, timeout: float | None) -> AsyncBatchFollower:
        return cls(client, await client.get_batch(batch_id), timeout)

    async def results(self) -> AsyncIterator[Job]:
        while True:
            if self.grew():
                for status in sorted(TERMINAL_STATUSES):
                    async for job in self.client.iter_jobs(batch_id=self.batch.id, status=status, limit=200):
                        if self.fresh(job):
                            yield job
            if self.complete():
                return
            await asyncio.sleep(self.next_pause())
            self.batch = await self.client.get_batch(self.batch.id)
