"""A load generator that drives the API like a real client: single jobs and batches, mixed kinds and sizes.

It only counts a job as accepted when the API answered 2xx with its id; 429/503 answers are retried after their
`Retry-After`, and connection errors (a restarting API or database) are retried too, with the same
`Idempotency-Key`, so a retried submission can never create a second job. With `cancel_every`, every so many single
image jobs run `cancel_steps` steps and a canceller thread cancels each once the API shows it running (what a user
who changes their mind does), recording when it asked and what the API answered (`LoadState.cancels`).
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from PIL import Image

from storage.states import DEFAULT_EVENT_TYPES, EventType

WEBHOOK_EVENTS = [str(e) for e in DEFAULT_EVENT_TYPES if e is not EventType.JOB_STARTED]


def tiny_png_data_url(seed: int, size: int = 64) -> str:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class LoadConfig:
    sizes: tuple[int, ...] = (64, 128)
    steps: int = 2
    batch_every: int = 10  # one batch submission every N submissions
    batch_items: int = 5
    webhook_url: str | None = None
    cancel_every: int = 0  # every N-th single image job is long and canceled once running (0: none)
    cancel_steps: int = 32


@dataclass(frozen=True)
class CancelAsk:
    """One cancel the canceller sent: when (UTC, just before sending), the answer's code and the job's status in
    it (`running` with a cancel requested: its worker stops it at its next step); None: it finished first."""

    job_id: str
    asked_at: datetime
    status_code: int | None
    status: str | None


@dataclass
class LoadState:
    accepted: list[str] = field(default_factory=list)
    subscribed: dict[str, list[str]] = field(default_factory=dict)
    batches: list[str] = field(default_factory=list)
    status_counts: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    to_cancel: list[str] = field(default_factory=list)
    cancels: list[CancelAsk] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int) -> None:
        with self.lock:
            self.status_counts[status] = self.status_counts.get(status, 0) + 1


class LoadGenerator:
    """Submits jobs from several threads until `stop()`; safe to run while services restart."""

    def __init__(self, api_url: str, api_key: str, config: LoadConfig, seed: int = 0) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.config = config
        self.state = LoadState()
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._n = 0
        self._n_lock = threading.Lock()

    def to_cancel(self, i: int) -> bool:
        """Whether single submission `i` is a long image job the canceller cancels once it runs."""
        every = self.config.cancel_every
        return bool(every) and i % every == every // 2 and i % 4 != 3  # not a question (i % 4 == 3)

    def job_body(self, i: int) -> dict[str, Any]:
        size = self.config.sizes[i % len(self.config.sizes)]
        kind = ("generate", "generate", "edit", "understand")[i % 4]
        body: dict[str, Any] = {"kind": kind, "seed": i}
        steps = self.config.cancel_steps if self.to_cancel(i) else self.config.steps
        if kind == "generate":
            body.update(prompt=f"a tiny test image number {i}", width=size, height=size, steps=steps)
        elif kind == "edit":
            body.update(image=tiny_png_data_url(i), instruction=f"make it brighter {i}", width=size, height=size,
                        steps=steps)
        else:
            body.update(image=tiny_png_data_url(i), question="What colour is this?", size=size, max_new_tokens=4)
        if self.config.webhook_url:
            body.update(webhook_url=self.config.webhook_url, webhook_events=WEBHOOK_EVENTS[:3])
        return body

    def _post(self, client: httpx.Client, path: str, json: Any) -> httpx.Response | None:
        """POST with retries on 429/503/5xx/connection errors, reusing one Idempotency-Key."""
        headers = dict(self.headers, **{"Idempotency-Key": str(uuid.uuid4())})
        for _ in range(200):
            if self._stop.is_set() and path.endswith("/batches"):
                return None
            try:
                resp = client.post(self.api_url + path, json=json, headers=headers, timeout=30)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            self.state.count(resp.status_code)
            if resp.status_code in (429, 503):
                time.sleep(min(5.0, float(resp.headers.get("retry-after", "1"))))
                continue
            if resp.status_code >= 500:
                with self.state.lock:
                    self.state.server_errors.append(f"{resp.status_code} {path}: {resp.text[:200]}")
                time.sleep(0.5)
                continue
            return resp
        return None

    def submit_one(self, client: httpx.Client, i: int) -> None:
        if self.config.batch_every and i % self.config.batch_every == self.config.batch_every - 1:
            items = [dict(self.job_body(i * 100 + k), custom_id=f"item-{i}-{k}") for k in
                     range(self.config.batch_items)]
            for item in items:  # batch-level webhook settings apply to the items
                item.pop("webhook_url", None), item.pop("webhook_events", None)
            body: dict[str, Any] = {"requests": items}
            if self.config.webhook_url:
                body.update(webhook_url=self.config.webhook_url, webhook_events=WEBHOOK_EVENTS)
            resp = self._post(client, "/v1/batches", body)
            if resp is not None and resp.status_code < 300:
                batch = resp.json()
                jobs = self._batch_jobs(client, batch["id"])
                with self.state.lock:
                    self.state.batches.append(batch["id"])
                    for job in jobs:
                        self.state.accepted.append(job["id"])
                        if self.config.webhook_url:
                            self.state.subscribed[job["id"]] = WEBHOOK_EVENTS
            return
        body = self.job_body(i)
        resp = self._post(client, "/v1/jobs", body)
        if resp is not None and resp.status_code < 300:
            with self.state.lock:
                self.state.accepted.append(resp.json()["id"])
                if self.to_cancel(i):
                    self.state.to_cancel.append(resp.json()["id"])
                if self.config.webhook_url:
                    self.state.subscribed[resp.json()["id"]] = body["webhook_events"]

    def _batch_jobs(self, client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
        """The jobs of an accepted batch, asked again while the API restarts (they must all be checked)."""
        while True:
            try:
                resp = client.get(f"{self.api_url}/v1/jobs", params={"batch_id": batch_id, "limit": 100},
                                  headers=self.headers, timeout=30)
                if resp.status_code == 200:
                    return list(resp.json()["data"])
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def _next(self) -> int:
        with self._n_lock:
            self._n += 1
            return self._n

    def _loop(self, rate_per_thread: float, limit: int | None) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                i = self._next()
                if limit is not None and i > limit:
                    return
                started = time.monotonic()
                self.submit_one(client, i)
                time.sleep(max(0.0, 1.0 / rate_per_thread - (time.monotonic() - started)))

    def _cancel_loop(self, submitters: list[threading.Thread]) -> None:
        """Cancel each long job once the API shows it running; one that finished first is recorded as such.
        Ends when the submitters have and nothing is left to cancel (or `stop()`)."""
        with httpx.Client() as client:
            while not self._stop.is_set():
                with self.state.lock:
                    pending = list(self.state.to_cancel)
                if not pending and not any(t.is_alive() for t in submitters):
                    return
                for job_id in pending:
                    ask = self._cancel_if_running(client, job_id)
                    if ask is not None:
                        with self.state.lock:
                            self.state.to_cancel.remove(job_id)
                            self.state.cancels.append(ask)
                time.sleep(0.02)  # a client polling its jobs, not a test waiting on a state

    def _cancel_if_running(self, client: httpx.Client, job_id: str) -> CancelAsk | None:
        try:
            status = client.get(f"{self.api_url}/v1/jobs/{job_id}", headers=self.headers, timeout=30
                                ).json().get("status")
        except (httpx.HTTPError, ValueError):
            return None  # the API restarts: ask again on the next sweep
        if status in ("succeeded", "failed", "canceled", "expired"):
            return CancelAsk(job_id, datetime.now(UTC), None, None)
        if status != "running":
            return None
        asked_at = datetime.now(UTC)
        for _ in range(100):
            try:
                resp = client.post(f"{self.api_url}/v1/jobs/{job_id}/cancel", headers=self.headers, timeout=30)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            self.state.count(resp.status_code)
            if resp.status_code >= 500 or resp.status_code in (429, 503):
                time.sleep(0.2)
                continue
            body = resp.json() if resp.status_code < 300 else {}
            return CancelAsk(job_id, asked_at, resp.status_code, body.get("status"))
        return CancelAsk(job_id, asked_at, None, None)

    def start(self, threads: int = 2, rate: float = 4.0, limit: int | None = None) -> None:
        """Submit at about `rate` submissions/s in total, until `stop()` or `limit` submissions."""
        for _ in range(threads):
            t = threading.Thread(target=self._loop, args=(rate / threads, limit), daemon=True)
            t.start()
            self._threads.append(t)
        if self.config.cancel_every:
            canceller = threading.Thread(target=self._cancel_loop, args=(list(self._threads),), daemon=True)
            canceller.start()
            self._threads.append(canceller)

    def wait(self) -> None:
        for t in self._threads:
            t.join()

    def stop(self) -> None:
        self._stop.set()
        self.wait()
