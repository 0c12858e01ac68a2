"""A real webhook receiver for the tests: a threaded `http.server` on loopback that records every request.

Its answers are scripted: `respond(status, headers)` queues one answer per request (then 200 by default);
`hold()` makes the next request wait until `release()` (to kill a worker mid-delivery). Also an independent
Standard Webhooks verifier, written from the spec here so the worker's signing code is not checked by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
    """Spec check: any `v1,` signature equals base64(HMAC-SHA256(b64decode(secret), f"{id}.{ts}.{body}"))."""
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(ts)) > tolerance:
        return False
    mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(p[3:] == expected for p in headers["webhook-signature"].split(" ") if p.startswith("v1,"))


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
