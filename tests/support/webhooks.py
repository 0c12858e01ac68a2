"""Webhook test helpers: a real loopback receiver, a frozen clock, jobs driven through JobStore, and THE verifier.

The receiver is a threaded `http.server` on loopback that records every request. Its answers are scripted:
`respond(status, headers)` queues one answer per request (then 200 by default); `hold()` makes the next request
wait until `release()` (to kill a worker mid-delivery). `standard_webhook_valid` is the tests' one Standard
Webhooks verifier, the `standardwebhooks` package's (tests/webhooks/test_signing.py pins that package's output to
a vector computed by hand). Knows the Standard Webhooks headers and `JobStore`'s public transitions; knows
nothing of fixtures or of the worker's signing code.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from storage.records import NewJob
from storage.tables import WebhookEvent, utcnow
from tests.support.claims import claim_job, lease_keys


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


def standard_webhook_valid(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300.0,
                           now: float | None = None) -> bool:
    """Whether one of the `webhook-signature` signatures is `secret`'s and the timestamp is fresh. Without `now`:
    `Webhook.verify` against the real clock (its window is 5 minutes, the default `tolerance`). With an injected
    clock (`now`, Unix seconds): the timestamp is checked against `now` here and the signature recomputed with
    `Webhook.sign`, since `verify` reads the real clock."""
    if now is None:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return False
        return True
    msg_id, ts = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(now - ts) > tolerance:
        return False
    expected = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body)
    return expected in headers["webhook-signature"].split(" ")


class Receiver:
    """Threaded HTTP server on 127.0.0.1; `url` is its base URL."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[Answer] = []
        self.cond = threading.Condition()
        self._hold = threading.Event()
        self._held = threading.Event()
        self._hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.cond:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.time()))
                    answer = receiver.answers.pop(0) if receiver.answers else Answer()
                    receiver.cond.notify_all()
                if not receiver._hold.is_set():
                    receiver._held.set()
                    receiver._hold.wait(60)
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        with self.cond:
            self.answers.append(Answer(status, headers or {}, body))

    def hold(self) -> None:
        self._held.clear()
        self._hold.clear()

    def wait_held(self, timeout: float) -> bool:
        return self._held.wait(timeout)

    def release(self) -> None:
        self._hold.set()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until `count` requests arrived (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {len(self.received)} requests, expected {count}")
                self.cond.wait(left)
            return list(self.received)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def drop_pending_events_of_others(session_factory: Any, owner_id: str) -> None:
    """Other packages' tests share the schema: their pending events are not the test's to send."""
    with session_factory.begin() as s:
        s.execute(update(WebhookEvent).where(WebhookEvent.owner_id != owner_id, WebhookEvent.status == "pending")
                  .values(status="dropped"))


class Clock:
    """A frozen clock that only `advance(seconds)` moves; the dispatcher and the test read the same time.

    It starts a minute ahead of the real time, so rows the stores write with the real time during a test are
    due at once, and exact schedule arithmetic holds (no real time passes between two readings).
    """

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class JobDriver:
    """Moves jobs through the real state machine so the outbox gets real events."""

    job_store: Any
    owner_id: str

    def create(self, url: str | None, events: list[str] | None = None, **kw: Any) -> Any:
        params = {"prompt": "a cat", "negative_prompt": None, "width": 256, "height": 256, "num_images": 1,
                  "steps": 4, "guidance_scale": 3.0, "guidance_schedule": "constant", "temperature": 1.0,
                  "seed": 1, "output_format": "png"}
        return self.job_store.create(NewJob(
            owner_id=self.owner_id, kind="generate", params=params,
            compat_key=f"generate:256:4:3.0:constant:{secrets.token_hex(4)}", queue="unipic.generate.s",
            seed=1, webhook_url=url, webhook_events=events, metadata={"k": "v"}, **kw,
        ))

    def start(self, job: Any) -> Any:
        return claim_job(self.job_store, job.id, "worker-test")[0]

    def succeed(self, job: Any) -> Any:
        claim = self.start(job)
        assert self.job_store.complete(claim, lease_keys(claim), timings={"model_seconds": 0.5})
        return claim
