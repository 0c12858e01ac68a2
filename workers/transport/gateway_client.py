"""The remote transport: `workers.transport.base.JobPort` and `ObjectPort` over the API's HTTPS worker gateway.

`GatewayJobs` turns each job-state call of the batch runner into a `/v1/worker/...` request authenticated by a
worker token; the server makes the same `JobStore` call with the lease token as the fence. `GatewayObjects`
reads inputs and writes results through the presigned URLs a claim handed out, and only those: a key with no
URL is refused here (and the bucket would refuse it anyway). It remembers each written object's size and
sha256, which `complete` declares so the server can check them before marking the job succeeded. Result URLs
name the lease's own keys and expire with the lease; each renewal hands out fresh ones. Every claim carries a
new claim id that its retries reuse, so a claim whose answer was lost returns the same jobs when retried (the
first send says `first_try`, so the gateway looks the id up only for a retry).

Transient failures (connection cut, timeouts, 5xx) are retried with backoff, then raise `GatewayUnreachable`
(`workers.transport.base.Unreachable`: the runner retries a finished job's `complete` while its lease holds); a
401 means the token was revoked and raises `TokenRevoked` (the worker stops; its leases expire and its jobs go
to other workers); 404/409 mean the claim is not (or no longer) ours and read as a stale claim (False), exactly
as `JobStore` answers them.
Knows nothing of the model, of batching, of databases or of storage credentials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

import httpx

from storage.errors import NotFound
from storage.records import Claim, JobRecord
from storage.states import JobErrorCode, JobStatus
from workers.transport.base import Unreachable
from workers.transport.gateway_cancels import CancelPollsUnsupported, GatewayCancelPolls, StopPolling

log = logging.getLogger(__name__)

RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0)
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class HttpResponse(Protocol):
    """The parts of a response the gateway client reads."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    def json(self) -> Any: ...
    def raise_for_status(self) -> Any: ...


class HttpClient(Protocol):
    """What the gateway client needs of an HTTP client: an `httpx.Client` in production.

    Tests hand in Starlette's in-process `TestClient`, which is built on another HTTP library (`httpx2` since
    Starlette 1.10) and refuses `httpx` objects. So only plain values cross this seam: URLs, JSON, bytes and a
    timeout in seconds; the default timeouts belong to the client that was built with them.
    """

    def post(self, url: str, *, json: Any, headers: dict[str, str], timeout: float = ...) -> HttpResponse: ...
    def get(self, url: str) -> HttpResponse: ...
    def put(self, url: str, *, content: bytes) -> HttpResponse: ...
    def close(self) -> None: ...


class GatewayError(RuntimeError):
    """The gateway answered something the worker cannot act on (after retries)."""


class TokenRevoked(GatewayError):
    """401: the worker token is unknown or revoked; the worker must stop."""


class GatewayUnreachable(GatewayError, Unreachable):
    """The gateway could not be reached (or kept answering 5xx/429) through every retry."""


class ResultRefused(GatewayError):
    """A write outside the held jobs' result keys (or a read of another job's input) was attempted."""


@dataclasses.dataclass
class Written:
    size: int
    sha256: str


class GatewayHttp:
    """POSTs JSON to `<base>/v1/worker/<path>` with the token, retrying transient failures."""

    def __init__(self, base_url: str, token: str, http: HttpClient | None = None,
                 pauses: Sequence[float] = RETRY_PAUSES) -> None:
        self.base = base_url.rstrip("/")
        self.pauses = tuple(pauses)
        self.http: HttpClient = http or httpx.Client(timeout=TIMEOUT)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.revoked = threading.Event()

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None,
             retry_body: dict[str, Any] | None = None) -> HttpResponse:
        """The response (2xx, 404, 409 or 422); raises `TokenRevoked` on 401, `GatewayError` after retries.
        `retry_body`, when given, is what the retries send instead of `body`."""
        url = f"{self.base}/v1/worker/{path}"
        last: Exception | None = None
        for attempt, pause in enumerate((*self.pauses, None)):
            try:
                response = self._send(url, body if attempt == 0 or retry_body is None else retry_body, timeout)
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code == 401:
                    self.revoked.set()
                    raise TokenRevoked(f"the gateway refused the worker token: {response.text[:200]}")
                if response.status_code < 500 and response.status_code != 429:
                    return response
                last = GatewayError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
            if pause is None:
                break
            log.warning("gateway %s failed (%s); retrying in %.1fs", path, last, pause)
            time.sleep(pause)
        raise GatewayUnreachable(f"gateway {path} failed after retries: {last}")

    def _send(self, url: str, body: dict[str, Any], timeout: float | None) -> HttpResponse:
        if timeout is None:  # the client's own default (`TIMEOUT`: a shorter connect timeout than read)
            return self.http.post(url, json=body, headers=self.headers)
        return self.http.post(url, json=body, headers=self.headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()


class GatewayObjects:
    """`ObjectPort` through presigned URLs: only the held jobs' inputs and result keys."""

    def __init__(self, http: HttpClient | None = None) -> None:
        self.http: HttpClient = http or httpx.Client(timeout=TIMEOUT)
        self._gets: dict[str, str] = {}
        self._puts: dict[str, str] = {}
        self.written: dict[str, Written] = {}
        self._lock = threading.Lock()

    def allow(self, gets: dict[str, str], puts: dict[str, str]) -> None:
        """URLs a claim handed out."""
        with self._lock:
            self._gets.update(gets)
            self._puts.update(puts)

    def forget(self, job_id: str) -> None:
        prefix = f"/{job_id}/"
        with self._lock:
            for table in (self._gets, self._puts, self.written):
                for key in [k for k in table if prefix in f"/{k}"]:
                    del table[key]

    def get(self, key: str, verify: bool = False) -> bytes:
        url = self._gets.get(key)
        if url is None:
            raise ResultRefused(f"{key} is not the input of a held job")
        for pause in (*RETRY_PAUSES[:3], None):
            try:
                response = self.http.get(url)
            except httpx.TransportError:
                if pause is None:
                    raise
                time.sleep(pause)
                continue
            if response.status_code == 404:
                raise NotFound(f"object {key} not found")
            response.raise_for_status()
            return response.content
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
            max_bytes: int | None = None) -> Written:
        url = self._puts.get(key)
        if url is None:
            raise ResultRefused(f"{key} is not a result key of a held job")
        body = data if isinstance(data, bytes) else data.read()
        response = self.http.put(url, content=body)  # results.write_result retries with backoff
        response.raise_for_status()
        written = Written(len(body), hashlib.sha256(body).hexdigest())
        with self._lock:
            self.written[key] = written
        return written

    def close(self) -> None:
        self.http.close()


class GatewayJobs:
    """`JobPort` over the gateway, plus `claim` (long-poll) and `heartbeat`."""

    def __init__(self, http: GatewayHttp, objects: GatewayObjects, worker: str) -> None:
        self.http, self.objects, self.worker = http, objects, worker
        self.model: str | None = None  # the model the worker holds (routing key; None: the default): claims take only its jobs
        self._jobs: dict[str, JobRecord] = {}
        self._tokens: dict[str, str] = {}
        self._progress_many = True  # the gateway has the grouped progress route (until a 404 says not)
        self.lease_seconds: float | None = None
        self._cancel_polls: GatewayCancelPolls | None = None
        self._polls_lock = threading.Lock()

    # ---- claiming -------------------------------------------------------------------------------------------
    def claim(self, max_items: int, max_batch_pixels: int, max_image_pixels: int | None = None,
              kinds: Sequence[str] | None = None, wait_seconds: float = 20.0, queue: str | None = None,
              skip_owners_of: Collection[str] = ()) -> list[Claim]:
        """Long-poll for a batch; the claimed jobs' records and URLs are remembered for the runner."""
        body = {"worker": self.worker, "max_items": max_items, "max_batch_pixels": max_batch_pixels,
                "max_image_pixels": max_image_pixels, "kinds": list(kinds) if kinds else None,
                "wait_seconds": wait_seconds, "claim_id": str(uuid.uuid4()), "first_try": True,
                "model": self.model}
        if queue is not None or skip_owners_of:  # only then: a gateway older than these fields refuses them
            body.update(queue=queue, skip_owners_of=list(skip_owners_of))
        # the retries reuse the claim id and say they are retries: only then does the gateway look the id up
        response = self.http.post("claim", body, timeout=wait_seconds + 30, retry_body={**body, "first_try": False})
        _check(response, "claim")
        payload = response.json()
        self.lease_seconds = float(payload["lease_seconds"])
        claims = []
        for item in payload["jobs"]:
            self._jobs[item["job_id"]] = _record(item)
            self._tokens[item["job_id"]] = item["lease_token"]
            gets = {item["input_key"]: item["input_url"]} if item.get("input_key") and item.get("input_url") else {}
            self.objects.allow(gets, item["result_urls"])
            claims.append(Claim(item["job_id"], item["lease_token"]))
        return claims

    def claim_for_message(self, job_id: str, worker_id: str, lease_seconds: float, max_items: int,
                          max_pixels: int, kinds: Sequence[str] | None = None,
                          wait_seconds: float = 0.0) -> list[Claim]:
        """No messages over the gateway: any claim is a claim of the next batch (no wait unless asked)."""
        return self.claim(max_items, max_pixels, kinds=kinds, wait_seconds=wait_seconds)

    def claim_newcomer(self, queue: str | None, worker_id: str, lease_seconds: float, max_pixels: int,
                       held: Collection[str], wait_seconds: float = 0.0) -> list[Claim]:
        """One job of `queue` (None: of any queue the token serves) of a key none of the `held` jobs belongs to
        (the gateway knows the keys; this worker sees only their tags), long-polling up to `wait_seconds`."""
        return self.claim(1, max_pixels, wait_seconds=wait_seconds, queue=queue, skip_owners_of=held)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """The claimed jobs as the claim described them (a remote worker reads no other job)."""
        return [self._jobs[j] for j in job_ids if j in self._jobs]

    # ---- leases, progress, cancels ----------------------------------------------------------------------------
    def renew(self, claims: Iterable[Claim], lease_seconds: float) -> list[Claim]:
        claims = list(claims)
        response = self.http.post("renew", self._claims_body(claims))
        _check(response, "renew")
        payload = response.json()
        held = set(payload["held"])
        for job_id, urls in (payload.get("result_urls") or {}).items():  # fresh, valid for the renewed lease
            if job_id in self._tokens:
                self.objects.allow({}, urls)
        return [c for c in claims if c.job_id in held]

    def set_progress(self, claim: Claim, step: int, total: int) -> bool:
        response = self.http.post("progress", {"worker": self.worker, "job_id": claim.job_id,
                                               "lease_token": claim.lease_token, "step": step, "total": total})
        return response.status_code == 200 and bool(response.json()["ok"])

    def set_progress_many(self, reports: Sequence[tuple[Claim, int, int]]) -> set[str]:
        """The jobs of a step in one request (`progress-many`: a running set's eight jobs cost the gateway one
        request, not eight); job by job against a gateway that predates that route (404)."""
        if not reports:
            return set()
        if self._progress_many:
            response = self.http.post("progress-many", {"worker": self.worker, "reports": [
                {"job_id": c.job_id, "lease_token": c.lease_token, "step": step, "total": total}
                for c, step, total in reports]})
            if response.status_code != 404:
                _check(response, "progress-many")
                return set(response.json()["held"])
            self._progress_many = False
            log.info("the gateway has no progress-many route: progress goes job by job")
        return {claim.job_id for claim, step, total in reports if self.set_progress(claim, step, total)}

    def cancel_requested_ids(self, job_ids: Iterable[str]) -> set[str]:
        claims = [Claim(j, self._tokens[j]) for j in job_ids if j in self._tokens]
        if not claims:
            return set()
        response = self.http.post("cancel-requests", self._claims_body(claims))
        _check(response, "cancel-requests")
        return set(response.json()["cancel_requested"])

    def wait_for_cancels(self, known: list[str], wait_seconds: float) -> tuple[list[str], bool]:
        """This worker's running jobs with a cancel request (but `known`), long-polling up to `wait_seconds`, and
        whether the gateway was watching (`cancels`); `CancelPollsUnsupported` from a gateway without the route."""
        try:
            response = self.http.post("cancels", {"worker": self.worker, "known": known,
                                                  "wait_seconds": wait_seconds}, timeout=wait_seconds + 30)
        except TokenRevoked as exc:
            raise StopPolling(str(exc)) from exc
        if response.status_code == 404:
            raise CancelPollsUnsupported("the gateway has no cancels route")
        _check(response, "cancels")
        payload = response.json()
        return [str(j) for j in payload["cancel_requested"]], bool(payload["watching"])

    def cancel_hints(self) -> GatewayCancelPolls:
        """This process's cancel long-polls, started at the first running batch that asks (`HearsCancels`)."""
        with self._polls_lock:
            if self._cancel_polls is None:
                self._cancel_polls = GatewayCancelPolls(self.wait_for_cancels).start()
            return self._cancel_polls

    def stop_cancel_hints(self) -> None:
        """Stop the cancel long-polls (the worker stops); a later `cancel_hints` starts them again."""
        with self._polls_lock:
            polls, self._cancel_polls = self._cancel_polls, None
        if polls is not None:
            polls.close()

    # ---- finishing ------------------------------------------------------------------------------------------
    def complete(self, claim: Claim, result_keys: Sequence[str], result_text: str | None = None,
                 timings: dict[str, float] | None = None, model_id: str | None = None,
                 model_revision: str | None = None) -> bool:
        """Declare the uploaded results; a result the server refuses is handed back to the queue (False)."""
        declared = []
        for key in result_keys:
            written = self.objects.written.get(key)
            if written is None:
                raise ResultRefused(f"{key} was not written through this worker")
            declared.append({"key": key, "size": written.size, "sha256": written.sha256})
        response = self.http.post("complete", {
            "worker": self.worker, "job_id": claim.job_id, "lease_token": claim.lease_token, "objects": declared,
            "timings": timings or {}, "model_id": model_id, "model_revision": model_revision,
        })
        if response.status_code == 422:
            log.error("job %s: the gateway refused its results (%s); handing it back", claim.job_id,
                      response.text[:300])
            self.release([claim])
            return False
        self._settled(claim, response)
        return response.status_code == 200

    def fail(self, claim: Claim, code: JobErrorCode, message: str) -> bool:
        return self._finish(claim, str(code.value if isinstance(code, JobErrorCode) else code), message)

    def cancel_running(self, claim: Claim) -> bool:
        return self._finish(claim, JobErrorCode.CANCELED.value, "canceled by request")

    def _finish(self, claim: Claim, code: str, message: str) -> bool:
        response = self.http.post("fail", {"worker": self.worker, "job_id": claim.job_id,
                                           "lease_token": claim.lease_token, "code": code,
                                           "message": message[:4000]})
        self._settled(claim, response)
        return response.status_code == 200

    def release(self, claims: Iterable[Claim]) -> int:
        claims = list(claims)
        if not claims:
            return 0
        response = self.http.post("release", self._claims_body(claims))
        _check(response, "release")
        for claim in claims:
            self._mark(claim.job_id, JobStatus.QUEUED)
        return int(response.json()["released"])

    # ---- heartbeat ------------------------------------------------------------------------------------------
    def heartbeat(self, **fields: Any) -> dict[str, Any]:
        response = self.http.post("heartbeat", {"worker": self.worker, **fields})
        _check(response, "heartbeat")
        payload: dict[str, Any] = response.json()
        return payload

    # ---- bookkeeping ----------------------------------------------------------------------------------------
    def _claims_body(self, claims: Sequence[Claim]) -> dict[str, Any]:
        return {"worker": self.worker,
                "claims": [{"job_id": c.job_id, "lease_token": c.lease_token} for c in claims]}

    def _settled(self, claim: Claim, response: HttpResponse) -> None:
        if response.status_code not in (200, 404, 409):
            raise GatewayError(f"job {claim.job_id}: HTTP {response.status_code} {response.text[:200]}")
        self._mark(claim.job_id, JobStatus.SUCCEEDED)

    def _mark(self, job_id: str, status: JobStatus) -> None:
        """The job left this worker: forget it (status kept for the runner's re-enqueue check)."""
        job = self._jobs.get(job_id)
        if job is not None:
            self._jobs[job_id] = dataclasses.replace(job, status=status.value)
        self._tokens.pop(job_id, None)
        self.objects.forget(job_id)

    def forget_finished(self) -> None:
        """Drop the records of jobs no longer held (called between batches)."""
        for job_id in [j for j in self._jobs if j not in self._tokens]:
            del self._jobs[job_id]


def _check(response: HttpResponse, what: str) -> None:
    if response.status_code != 200:
        raise GatewayError(f"gateway {what}: HTTP {response.status_code} {response.text[:300]}")


_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]


def _record(item: dict[str, Any]) -> JobRecord:
    """A `JobRecord` with what the claim told (the rest of the row is none of a remote worker's business)."""
    values: dict[str, Any] = dict.fromkeys(_FIELDS)
    values.update(
        id=item["job_id"], owner_id=item.get("tenant", ""), kind=item["kind"], status=JobStatus.RUNNING.value,
        priority=int(item.get("priority", 0)), params=item["params"], compat_key=item["compat_key"],
        queue=item["queue"], attempts=item["attempts"], max_attempts=0, lease_token=item["lease_token"],
        cancel_requested=False, created_at=_created_at(item.get("created_at")),
        seed=item["seed"], input_key=item.get("input_key"), pixels=item["pixels"],
    )
    return JobRecord(**values)


def _created_at(value: str | None) -> datetime:
    """The job's creation time as the gateway told it (an older gateway does not: now)."""
    if not value:
        return datetime.now(UTC)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
