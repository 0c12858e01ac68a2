"""The SDK's errors: one base class, and the API's own error shape as `ApiError`.

Owns turning an error answer (`{"error": {"code", "message", "field", "line"}}`) into an exception. It does
not know which calls are retried (see `retrying`) nor anything of the server's code.
"""

from __future__ import annotations

from typing import Any

import httpx


class UnipicError(Exception):
    """Base of every error this package raises."""


class ApiError(UnipicError):
    """An error answer from the API; `status` 0 with code `unreachable` when no answer came at all."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 line: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.line = line
        self.retry_after = retry_after


class WaitTimeout(UnipicError):
    """A job or batch was still not finished after the time allowed; `last` is the last state seen."""

    def __init__(self, last: Any, seconds: float) -> None:
        super().__init__(f"{last.id} still {last.status} after {seconds:.0f} s")
        self.last = last


class WebhookVerificationError(UnipicError):
    """A webhook delivery whose signature, timestamp or body did not check out."""


def retry_after_of(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (the delta form; the date form is rare and treated as absent)."""
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def error_of(response: httpx.Response) -> ApiError:
    """The `ApiError` of an error answer (any body: a proxy's HTML page becomes code `http_error`)."""
    retry_after = retry_after_of(response)
    try:
        err = response.json()["error"]
        return ApiError(response.status_code, str(err.get("code")), str(err.get("message", "")),
                        err.get("field"), err.get("line"), retry_after)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(response.status_code, "http_error", response.text[:300], retry_after=retry_after)


def unreachable(url: str, exc: Exception) -> ApiError:
    return ApiError(0, "unreachable", f"cannot reach {url}: {exc}")
