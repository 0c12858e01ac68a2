"""The direct transport's job store, riding out a database restart on the calls that settle a job.

A direct worker that finished a job must not lose that work because Postgres restarted or a connection dropped
at the moment it reports it. `RetryingJobStore` is `storage.jobs.store.JobStore` with `complete`, `fail`,
`cancel_running` and `release` retried through transient database errors (a lost connection, an operational
error) with bounded backoff, as the gateway client retries 5xx. Retrying is safe because each of them is a
compare-and-set fenced by the lease token: a retry of a call whose first attempt committed (and whose answer was
lost) finds the job no longer running under that lease and answers False (0 for `release`), changing nothing.
Other calls are not retried here (claims are retried by their message, renewals count as lost leases,
progress is best effort). Knows nothing of the model or of batching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from storage.db import DATABASE_UNAVAILABLE, DatabaseError, connection_lost
from storage.jobs.store import JobStore
from storage.records import Claim
from storage.states import JobErrorCode

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # about 16 s in all: a database restart, not an outage


def transient(exc: BaseException) -> bool:
    """Whether a database error is worth retrying (the connection, not the statement, failed)."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    return isinstance(exc, DatabaseError) and connection_lost(exc)


class RetryingJobStore(JobStore):
    """`JobStore` whose settling calls are retried through transient database errors."""

    pauses: Sequence[float] = RETRY_PAUSES
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def complete(self, claim: Claim, result_keys: Sequence[str], result_text: str | None = None,
                 timings: dict[str, float] | None = None, model_id: str | None = None,
                 model_revision: str | None = None) -> bool:
        return self._retry("complete", claim.job_id, lambda: super(RetryingJobStore, self).complete(
            claim, result_keys, result_text, timings, model_id, model_revision))

    def fail(self, claim: Claim, code: JobErrorCode, message: str) -> bool:
        return self._retry("fail", claim.job_id, lambda: super(RetryingJobStore, self).fail(claim, code, message))

    def cancel_running(self, claim: Claim) -> bool:
        return self._retry("cancel", claim.job_id, lambda: super(RetryingJobStore, self).cancel_running(claim))

    def release(self, claims: Iterable[Claim]) -> int:
        claims = list(claims)
        return self._retry("release", ",".join(c.job_id for c in claims),
                           lambda: super(RetryingJobStore, self).release(claims))

    def _retry(self, what: str, job_ids: str, call: Callable[[], T]) -> T:
        for attempt, pause in enumerate((*self.pauses, None)):
            try:
                return call()
            except Exception as exc:
                if pause is None or not transient(exc):
                    raise
                log.warning("job %s: %s failed on a database error (attempt %d), retrying in %.1fs: %s",
                            job_ids, what, attempt + 1, pause, exc)
                self.sleep(pause)
        raise AssertionError("unreachable")
