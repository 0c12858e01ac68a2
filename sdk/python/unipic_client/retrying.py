"""When to send a request again, and how long to wait first.

Connection errors, 429 and 503 are retried with exponential backoff and jitter; a `Retry-After` from the
server wins over the backoff (capped by `max_delay`). Every submission carries an Idempotency-Key, so sending a
POST again can never duplicate work. This module decides; the clients sleep (`time.sleep` or `asyncio.sleep`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from unipic_client.errors import error_of, retry_after_of, unreachable

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` further tries after the first; backoff `base_delay * 2**n` (+-25 % jitter) up to `max_delay`."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def should_retry(self, attempt: int, status: int | None) -> bool:
        """`status` None: the request never got an answer (connection refused, reset, timed out)."""
        if attempt >= self.max_retries:
            return False
        return status is None or status in RETRY_STATUSES

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (0-based `attempt` of the try that failed)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        backoff = min(self.base_delay * 2**attempt, self.max_delay)
        return backoff * random.uniform(0.75, 1.25)  # jitter, not security

    def after(self, attempt: int, outcome: httpx.Response | httpx.TransportError, base_url: str
              ) -> httpx.Response | float:
        """What try number `attempt` (0-based) came to: the answer to return (a success), or the seconds to wait
        before sending again; raises the final error when it must not be retried (`ApiError`; code
        `unreachable` when no answer came at all)."""
        if isinstance(outcome, httpx.TransportError):
            if not self.should_retry(attempt, None):
                raise unreachable(base_url, outcome) from None
            return self.delay(attempt)
        if outcome.status_code < 400:
            return outcome
        if not self.should_retry(attempt, outcome.status_code):
            raise error_of(outcome)
        return self.delay(attempt, retry_after_of(outcome))


NO_RETRIES = RetryPolicy(max_retries=0)
