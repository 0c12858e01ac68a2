"""A webhook receiver on loopback that records every delivery and can be taken down and brought back.

Used by the reliability suite to check that each subscribed event arrives at least once with a stable
`webhook-id`, and that the signature verifies (with the `standardwebhooks` package).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    timestamp: str
    signatures: str
    body: bytes
    received_at: float

    @property
    def event(self) -> dict:
        return json.loads(self.body)


def verify_standard_webhook(secret: str, d: Delivery, tolerance_s: float = 300.0) -> bool:
    """Whether one of the delivery's signatures is `secret`'s and it was sent within `tolerance_s` of now.
    The signature is `Webhook.sign`'s; the window is checked here, as runs check deliveries long after they came
    (`Webhook.verify` holds a fixed 5 minutes)."""
    if abs(time.time() - int(d.timestamp)) > tolerance_s:
        return False
    expected = Webhook(secret).sign(d.webhook_id, datetime.fromtimestamp(int(d.timestamp), UTC), d.body)
    return expected in d.signatures.split()


class WebhookReceiver:
    """Threaded HTTP server; `down()` closes the port (connections refused), `up()` reopens it."""

    def __init__(self, port: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(
                        self.headers.get("webhook-id", ""), self.headers.get("webhook-timestamp", "0"),
                        self.headers.get("webhook-signature", ""), body, time.time()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    close = down
