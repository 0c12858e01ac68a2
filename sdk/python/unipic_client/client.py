"""`Client`: the synchronous SDK over the public API (design.md §4).

Owns sending (bearer key, retries with backoff honouring `Retry-After`, error answers as `ApiError`) and the
calls users make: submit jobs and batches (each with an automatic Idempotency-Key), read, list, cancel,
wait (`waiting`), stream a batch's results as items finish, upload images, download results, and the webhook
settings of the key. Request shapes live in `calls`; it knows nothing of the server's code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import httpx

from unipic_client import calls
from unipic_client.calls import BatchItems, Call, ImageInput
from unipic_client.errors import ApiError, error_of, unreachable
from unipic_client.models import Batch, BatchesPage, Job, JobsPage, Progress, Upload, UploadDone
from unipic_client.retrying import RetryPolicy
from unipic_client.waiting import BatchFollower, JobWaiter

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Arguments first, then `UNIPIC_API_URL` / `UNIPIC_API_KEY`, then the local default URL."""
    url = base_url or os.environ.get("UNIPIC_API_URL") or DEFAULT_BASE_URL
    return url.rstrip("/") + "/", api_key or os.environ.get("UNIPIC_API_KEY") or None


class Connection:
    """What both clients (`Client`, `aio.AsyncClient`) know before sending anything: the base URL and key, the
    retry policy, the HTTP client's options, and which URLs are the API's own (sent with the key) rather than
    another origin's (presigned links: S3 refuses a second authentication)."""

    def __init__(self, base_url: str | None, api_key: str | None, retry: RetryPolicy | None) -> None:
        self.base_url, self.api_key = resolve(base_url, api_key)
        self.retry = retry or RetryPolicy()

    def http_options(self, timeout: float) -> dict[str, Any]:
        """`httpx.Client` / `httpx.AsyncClient` options: base URL, bearer key, default timeout."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"base_url": self.base_url, "headers": headers, "timeout": timeout}

    def _same_origin(self, url: str) -> bool:
        return urlsplit(url)[:2] == urlsplit(self.base_url)[:2]


class Client(Connection):
    """A synchronous client. `Client()` reads `UNIPIC_API_URL` and `UNIPIC_API_KEY`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, http: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, retry)
        self.http = http or httpx.Client(**self.http_options(timeout))
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ----------------------------------------------------------------------------------------
    def send(self, call: Call) -> httpx.Response:
        """Send with retries (connection errors, 429, 502-504); an error answer raises `ApiError`."""
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self.http.request(**call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            step = self.retry.after(attempt, outcome, self.base_url)
            if isinstance(step, httpx.Response):
                return step
            self.sleep(step)
            attempt += 1

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any route: the decoded JSON answer (None when empty)."""
        response = self.send(Call(method, path.lstrip("/"), **kwargs))
        return response.json() if response.content else None

    # ---- jobs ---------------------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job body (`{"kind": ..., ...}`); a retry with the same key returns the same job."""
        return Job.model_validate(self.send(calls.create_job(body, idempotency_key)).json())

    def generate(self, prompt: str, *, size: int | None = None, idempotency_key: str | None = None,
                 **options: Any) -> Job:
        """Submit a text-to-image job (options: steps, seed, guidance_scale, num_images, output_format...)."""
        return self.submit({"kind": "generate", "prompt": prompt, "size": size, **options},
                           idempotency_key=idempotency_key)

    def edit(self, image: ImageInput, instruction: str, *, size: int | None = None,
             idempotency_key: str | None = None, **options: Any) -> Job:
        """Submit an edit of `image` (a path, bytes, a data URL or `{"upload_id": ...}`)."""
        return self.submit({"kind": "edit", "image": calls.image_input(image), "instruction": instruction,
                            "size": size, **options}, idempotency_key=idempotency_key)

    def understand(self, image: ImageInput, question: str, *, idempotency_key: str | None = None,
                   **options: Any) -> Job:
        """Submit a question about an image; the answer is `job.text` once done."""
        return self.submit({"kind": "understand", "image": calls.image_input(image), "question": question,
                            **options}, idempotency_key=idempotency_key)

    def get_job(self, job_id: str, *, wait: float | None = None) -> Job:
        """The job; with `wait`, the server holds the answer up to that many seconds until it is done."""
        return Job.model_validate(self.send(calls.get_job(job_id, wait)).json())

    def list_jobs(self, **filters: Any) -> JobsPage:
        """One page: filters status, kind, batch_id, created_after, created_before, cursor, limit."""
        return JobsPage.model_validate(self.send(calls.list_jobs(**filters)).json())

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters, following the cursor."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list_jobs(cursor=cursor, **filters)
            yield from page.data
            if not (cursor := page.next_cursor):
                return

    def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(self.send(Call("POST", f"v1/jobs/{job_id}/cancel")).json())

    def wait(self, job: Job | str, *, timeout: float | None = None,
             on_progress: Callable[[Job, Progress | None], None] | None = None, sse: bool = True) -> Job:
        """Wait until the job is finished, over server-sent events (long polling if SSE is unavailable);
        `WaitTimeout` after `timeout` seconds. `on_progress(job, progress)` sees each change."""
        job_id = job if isinstance(job, str) else job.id
        return JobWaiter(self, job_id, timeout, on_progress).run(sse)

    def run(self, body: dict[str, Any], *, timeout: float | None = None) -> Job:
        """Submit and wait."""
        return self.wait(self.submit(body), timeout=timeout)

    # ---- batches ------------------------------------------------------------------------------------------
    def submit_batch(self, items: BatchItems, *, idempotency_key: str | None = None,
                     webhook_url: str | None = None, webhook_events: list[str] | None = None,
                     metadata: dict[str, Any] | None = None) -> Batch:
        """Submit many jobs at once (all or nothing) from an iterable of bodies or a JSONL file."""
        call = calls.create_batch(calls.batch_lines(items), idempotency_key, webhook_url=webhook_url,
                                  webhook_events=webhook_events, metadata=metadata)
        return Batch.model_validate(self.send(call).json())

    def get_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self.send(Call("GET", f"v1/batches/{batch_id}")).json())

    def list_batches(self, **filters: Any) -> BatchesPage:
        return BatchesPage.model_validate(self.send(calls.list_batches(**filters)).json())

    def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self.send(Call("POST", f"v1/batches/{batch_id}/cancel")).json())

    def wait_batch(self, batch: Batch | str, *, timeout: float | None = None,
                   on_update: Callable[[Batch], None] | None = None) -> Batch:
        """Wait until every item of the batch is finished; `WaitTimeout` after `timeout` seconds."""
        follower = BatchFollower(self, batch if isinstance(batch, str) else batch.id, timeout, on_update)
        for _job in follower.results():
            pass
        return follower.batch

    def iter_results(self, batch: Batch | str, *, timeout: float | None = None) -> Iterator[Job]:
        """The batch's jobs as they finish (each exactly once, in finishing order as seen)."""
        yield from BatchFollower(self, batch if isinstance(batch, str) else batch.id, timeout).results()

    def run_batch(self, items: BatchItems, *, timeout: float | None = None, **options: Any) -> Iterator[Job]:
        """Submit a batch, then yield its jobs as they finish."""
        yield from self.iter_results(self.submit_batch(items, **options), timeout=timeout)

    # ---- uploads and downloads ----------------------------------------------------------------------------
    def upload(self, image: bytes | Path | str) -> str:
        """Upload an image once, reference it in many jobs as `{"upload_id": ...}`; returns the id."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        ticket = Upload.model_validate(self.send(calls.create_upload(calls.content_type_of(data))).json())
        url = urljoin(self.base_url, ticket.url)
        if self._same_origin(url):
            self.send(Call("PUT", url, content=data, headers=ticket.headers))
        else:
            answer = httpx.put(url, content=data, headers=ticket.headers, timeout=self.http.timeout)
            if answer.status_code >= 400:
                raise error_of(answer)
        return UploadDone(upload_id=ticket.upload_id, bytes=len(data)).upload_id

    def download(self, url: str) -> bytes:
        """Fetch a result URL: same-origin links with the API key, presigned links of another origin without
        (S3 refuses a second authentication)."""
        absolute = urljoin(self.base_url, url)
        if self._same_origin(absolute):
            return self.send(Call("GET", absolute)).content
        try:
            response = httpx.get(absolute, timeout=self.http.timeout)
        except httpx.TransportError as exc:
            raise unreachable(absolute, exc) from None
        if response.status_code >= 400:
            raise error_of(response)
        return response.content

    def save(self, job: Job, path: str | Path) -> list[Path]:
        """Write the job's images: `path` for one image, `stem-1.ext`, `stem-2.ext`... for several; a
        directory gets `<job id>[-N].<format>`."""
        images = job.result.images if job.result else []
        targets = image_paths(Path(path), job, len(images))
        for image, target in zip(images, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.download(image.url))
        return targets

    def download_manifest(self, batch: Batch | str) -> bytes:
        """The JSONL results manifest of a finished batch (one line per item)."""
        batch = self.get_batch(batch) if isinstance(batch, str) else batch
        if not batch.manifest_url:
            raise ApiError(409, "not_finished", f"batch {batch.id} has no manifest yet ({batch.status})")
        return self.download(batch.manifest_url)

    # ---- webhooks and workers -----------------------------------------------------------------------------
    def webhook_secret(self) -> dict[str, Any]:
        return self.request("GET", "v1/webhook-secret")

    def rotate_webhook_secret(self) -> dict[str, Any]:
        return self.request("POST", "v1/webhook-secret/rotate")

    def webhook_endpoints(self) -> dict[str, Any]:
        return self.request("GET", "v1/webhook-endpoints")

    def set_default_webhook(self, url: str | None, events: list[str] | None = None) -> dict[str, Any]:
        body = {"url": url, **({"events": events} if events else {})}
        return self.request("PUT", "v1/webhook-endpoints/default", json=body)

    def enable_webhook_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return self.request("POST", f"v1/webhook-endpoints/{endpoint_id}/enable")

    def deliveries(self, job_id: str) -> dict[str, Any]:
        """Every webhook event of a job with its delivery attempts."""
        return self.request("GET", f"v1/jobs/{job_id}/deliveries")

    def replay_delivery(self, event_id: str) -> dict[str, Any]:
        return self.request("POST", f"v1/webhook-events/{event_id}/replay")

    def workers(self) -> dict[str, Any]:
        return self.request("GET", "v1/workers")


def image_paths(path: Path, job: Job, count: int) -> list[Path]:
    """Where `count` images of `job` go for a target `path` (a file, or an existing directory)."""
    fmt = str(job.params.get("output_format") or "png")
    if path.is_dir():
        stem, suffix, folder = job.id, "." + ("jpg" if fmt == "jpeg" else fmt), path
    else:
        stem, suffix, folder = path.stem, path.suffix, path.parent
    if count == 1:
        return [folder / f"{stem}{suffix}"]
    return [folder / f"{stem}-{i + 1}{suffix}" for i in range(count)]
