"""`AsyncClient`: the SDK for asyncio code, the same calls as `Client` awaited.

Owns async sending (retries with backoff honouring `Retry-After`, `ApiError`) and the async forms of submit,
read, list, cancel, wait (SSE, long-poll fallback: `aio_waiting`), batches streamed as items finish, uploads
and downloads. Request shapes come from `calls`, the same as the sync client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin

import httpx

from unipic_client import calls
from unipic_client.aio_waiting import AsyncBatchFollower, AsyncJobWaiter
from unipic_client.calls import BatchItems, Call, ImageInput
from unipic_client.client import Connection, image_paths
from unipic_client.errors import ApiError, error_of, unreachable
from unipic_client.models import Batch, BatchesPage, Job, JobsPage, Progress, Upload
from unipic_client.retrying import RetryPolicy


class AsyncClient(Connection):
    """An asyncio client. `AsyncClient()` reads `UNIPIC_API_URL` and `UNIPIC_API_KEY`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, retry)
        self.http = http or httpx.AsyncClient(**self.http_options(timeout))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self.http.request(**call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            step = self.retry.after(attempt, outcome, self.base_url)
            if isinstance(step, httpx.Response):
                return step
            await asyncio.sleep(step)
            attempt += 1

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.send(Call(method, path.lstrip("/"), **kwargs))
        return response.json() if response.content else None

    # ---- jobs ---------------------------------------------------------------------------------------------
    async def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        return Job.model_validate((await self.send(calls.create_job(body, idempotency_key))).json())

    async def generate(self, prompt: str, *, size: int | None = None, idempotency_key: str | None = None,
                       **options: Any) -> Job:
        return await self.submit({"kind": "generate", "prompt": prompt, "size": size, **options},
                                 idempotency_key=idempotency_key)

    async def edit(self, image: ImageInput, instruction: str, *, size: int | None = None,
                   idempotency_key: str | None = None, **options: Any) -> Job:
        return await self.submit({"kind": "edit", "image": calls.image_input(image), "instruction": instruction,
                                  "size": size, **options}, idempotency_key=idempotency_key)

    async def understand(self, image: ImageInput, question: str, *, idempotency_key: str | None = None,
                         **options: Any) -> Job:
        return await self.submit({"kind": "understand", "image": calls.image_input(image),
                                  "question": question, **options}, idempotency_key=idempotency_key)

    async def get_job(self, job_id: str, *, wait: float | None = None) -> Job:
        return Job.model_validate((await self.send(calls.get_job(job_id, wait))).json())

    async def list_jobs(self, **filters: Any) -> JobsPage:
        return JobsPage.model_validate((await self.send(calls.list_jobs(**filters))).json())

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[Job]:
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_jobs(cursor=cursor, **filters)
            for job in page.data:
                yield job
            if not (cursor := page.next_cursor):
                return

    async def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate((await self.send(Call("POST", f"v1/jobs/{job_id}/cancel"))).json())

    async def wait(self, job: Job | str, *, timeout: float | None = None,
                   on_progress: Callable[[Job, Progress | None], None] | None = None, sse: bool = True) -> Job:
        """Wait until the job is finished (SSE, long-poll fallback); `WaitTimeout` after `timeout` s."""
        job_id = job if isinstance(job, str) else job.id
        return await AsyncJobWaiter(self, job_id, timeout, on_progress).run(sse)

    # ---- batches ------------------------------------------------------------------------------------------
    async def submit_batch(self, items: BatchItems, *, idempotency_key: str | None = None,
                           webhook_url: str | None = None, webhook_events: list[str] | None = None,
                           metadata: dict[str, Any] | None = None) -> Batch:
        call = calls.create_batch(calls.batch_lines(items), idempotency_key, webhook_url=webhook_url,
                                  webhook_events=webhook_events, metadata=metadata)
        return Batch.model_validate((await self.send(call)).json())

    async def get_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate((await self.send(Call("GET", f"v1/batches/{batch_id}"))).json())

    async def list_batches(self, **filters: Any) -> BatchesPage:
        return BatchesPage.model_validate((await self.send(calls.list_batches(**filters))).json())

    async def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate((await self.send(Call("POST", f"v1/batches/{batch_id}/cancel"))).json())

    async def iter_results(self, batch: Batch | str, *, timeout: float | None = None) -> AsyncIterator[Job]:
        """The batch's jobs as they finish, each once."""
        follower = await AsyncBatchFollower.start(self, batch if isinstance(batch, str) else batch.id, timeout)
        async for job in follower.results():
            yield job

    async def wait_batch(self, batch: Batch | str, *, timeout: float | None = None) -> Batch:
        follower = await AsyncBatchFollower.start(self, batch if isinstance(batch, str) else batch.id, timeout)
        async for _job in follower.results():
            pass
        return follower.batch

    # ---- uploads and downloads ----------------------------------------------------------------------------
    async def upload(self, image: bytes | Path | str) -> str:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        ticket = Upload.model_validate((await self.send(calls.create_upload(calls.content_type_of(data)))).json())
        url = urljoin(self.base_url, ticket.url)
        if self._same_origin(url):
            await self.send(Call("PUT", url, content=data, headers=ticket.headers))
        else:
            async with httpx.AsyncClient(timeout=self.http.timeout) as bare:
                answer = await bare.put(url, content=data, headers=ticket.headers)
            if answer.status_code >= 400:
                raise error_of(answer)
        return ticket.upload_id

    async def download(self, url: str) -> bytes:
        absolute = urljoin(self.base_url, url)
        if self._same_origin(absolute):
            return (await self.send(Call("GET", absolute))).content
        try:
            async with httpx.AsyncClient(timeout=self.http.timeout) as bare:
                response = await bare.get(absolute)
        except httpx.TransportError as exc:
            raise unreachable(absolute, exc) from None
        if response.status_code >= 400:
            raise error_of(response)
        return response.content

    async def save(self, job: Job, path: str | Path) -> list[Path]:
        images = job.result.images if job.result else []
        targets = image_paths(Path(path), job, len(images))
        for image, target in zip(images, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await self.download(image.url))
        return targets

    async def download_manifest(self, batch: Batch | str) -> bytes:
        """The JSONL results manifest of a finished batch (one line per item)."""
        batch = await self.get_batch(batch) if isinstance(batch, str) else batch
        if not batch.manifest_url:
            raise ApiError(409, "not_finished", f"batch {batch.id} has no manifest yet ({batch.status})")
        return await self.download(batch.manifest_url)
