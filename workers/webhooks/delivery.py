"""One HTTP POST of a webhook to an address the SSRF guard has already checked.

The request goes to the checked IP itself (the `Host` header and TLS SNI/certificate check keep the original
name), so the name cannot resolve somewhere else between the check and the connection. Redirects are never
followed, proxies from the environment are ignored, and at most `SNIPPET_BYTES` of the answer are read.
It returns what happened as data (`SendResult`); deciding about retries belongs to `workers.webhooks.dispatcher`.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache

import httpx

from egress.url_guard import WebhookTarget

log = logging.getLogger(__name__)

SNIPPET_BYTES = 1024
USER_AGENT = "unipic-webhooks/1"


@dataclass(frozen=True)
class SendResult:
    """The outcome of one POST: a status code (None when no answer came) and what to log about it."""

    status_code: int | None
    latency_ms: float
    snippet: str | None = None
    error: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post_webhook(target: WebhookTarget, headers: dict[str, str], body: bytes, timeout: float) -> SendResult:
    """POST `body` to `target`, trying its checked addresses in order until one accepts a connection."""
    started = time.monotonic()
    error = "no address"
    for address in target.addresses:
        try:
            return _post_to(address, target, headers, body, timeout, started)
        except httpx.ConnectError as exc:
            error = f"connect to {address} failed: {exc}"
            log.info("webhook connect failed host=%s address=%s: %s", target.host, address, exc)
        except httpx.HTTPError as exc:
            return SendResult(None, _ms_since(started), error=f"{type(exc).__name__}: {exc}"[:500])
    return SendResult(None, _ms_since(started), error=error[:500])


def _post_to(
    address: str, target: WebhookTarget, headers: dict[str, str], body: bytes, timeout: float, started: float
) -> SendResult:
    url = httpx.URL(target.url)
    host_header = url.netloc.decode("ascii")
    request_headers = {
        **headers,
        "host": host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=_tls_context()) as client:
        request = client.build_request(
            "POST", url.copy_with(host=address.split("%", 1)[0]), headers=request_headers, content=body,
            extensions=extensions,
        )
        response = client.send(request, stream=True)
        try:
            snippet = _read_snippet(response)
        finally:
            response.close()
        return SendResult(
            status_code=response.status_code,
            latency_ms=_ms_since(started),
            snippet=snippet,
            retry_after=response.headers.get("retry-after"),
        )


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # building a verifying context costs ~30 ms (loading the CA bundle): once per process, shared by threads;
    # clients stay per request (no pooled connection is ever reused for another host name)
    return httpx.create_ssl_context()


def _read_snippet(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= SNIPPET_BYTES:
            break
    return b"".join(chunks)[:SNIPPET_BYTES].decode("utf-8", "replace")


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)
