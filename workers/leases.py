"""Keeping the leases of a running batch alive.

While a batch runs, a background thread renews the leases of its jobs every `lease_seconds / 3`. A job whose
renewal fails (the sweeper reclaimed it, or it was canceled) is recorded as lost: the batch drops it at the
next step and never completes it; the store's fencing token would refuse a stale write anyway. Past the
batch's hard time limit the keeper stops renewing, so a hung worker's jobs are reclaimed by the sweeper.
It knows nothing of the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Self

from storage.records import Claim
from workers.transport import JobPort

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews a batch's claims in a daemon thread; use as a context manager around the batch."""

    def __init__(
        self,
        store: JobPort,
        claims: Sequence[Claim],
        lease_seconds: float,
        stop_renewing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._store = store
        self._lease_seconds = lease_seconds
        self._held: dict[str, Claim] = {c.job_id: c for c in claims}
        self._lost: set[str] = set()
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_renewing = stop_renewing
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._lease_seconds)

    def lost(self) -> set[str]:
        """Ids of jobs whose lease this worker no longer holds."""
        with self._lock:
            return set(self._lost)

    def finish(self, job_id: str) -> None:
        """Stop renewing a job that reached its end in this batch."""
        with self._lock:
            self._finished.add(job_id)

    def _run(self) -> None:
        interval = self._lease_seconds / 3
        while not self._stop.wait(interval):
            if self._stop_renewing():
                log.warning("batch over its hard time limit: no longer renewing leases of %s", list(self._held))
                return
            self.renew_now()

    def renew_now(self) -> None:
        """Renew every held, unfinished claim once; record the ones the store no longer grants."""
        with self._lock:
            pending = [c for j, c in self._held.items() if j not in self._finished and j not in self._lost]
        if not pending:
            return
        try:
            still = {c.job_id for c in self._store.renew(pending, self._lease_seconds)}
        except Exception:  # a database hiccup: try again next interval; the lease has 2/3 of its time left
            log.exception("lease renewal failed for %s", [c.job_id for c in pending])
            return
        gone = {c.job_id for c in pending} - still
        if gone:
            log.warning("lost leases of jobs %s", sorted(gone))
            with self._lock:
                self._lost |= gone
