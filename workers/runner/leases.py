"""Keeping the leases of a running batch alive.

While a batch runs, a background thread renews the leases of its jobs every `lease_seconds / 3`. A job whose
renewal is refused (the sweeper reclaimed it, or it was canceled), or whose renewal could not be made at all (the
network or the database failed: the worker can no longer prove it holds the lease), is recorded as lost: the
batch drops it at the next step and never writes or completes it; the store's fencing token would refuse a
stale completion anyway. `holds(job_id)` is the proof a writer asks for before each upload: not lost, and the
last successful renewal (or the claim) recent enough that the lease cannot have expired since. Past the batch's
hard time limit the keeper stops renewing, so a hung worker's jobs are reclaimed by the sweeper.
It knows nothing of the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Self

from storage.records import Claim
from workers.transport.base import JobPort

log = logging.getLogger(__name__)

# a lease proven at t is trusted until t + this share of its length (the rest covers clock rate and transit)
PROOF_SHARE = 0.8


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
        self._proven_at = time.monotonic()  # the claim was made just before the batch started
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

    def holds(self, job_id: str) -> bool:
        """Whether this worker can still prove it holds the job's lease (check before every write)."""
        with self._lock:
            if job_id not in self._held or job_id in self._lost:
                return False
            proven_at = self._proven_at
        return time.monotonic() < proven_at + self._lease_seconds * PROOF_SHARE

    def add(self, claims: Sequence[Claim]) -> None:
        """Start renewing claims made after the keeper started (a running set admitting jobs); just claimed,
        they are proven now."""
        with self._lock:
            for claim in claims:  # a job claimed again (released under us, re-queued) starts over on its new lease
                self._held[claim.job_id] = claim
                self._lost.discard(claim.job_id)
                self._finished.discard(claim.job_id)

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
        asked_at = time.monotonic()
        try:
            still = {c.job_id for c in self._store.renew(pending, self._lease_seconds)}
        except Exception:  # the lease can no longer be proven: stop writing for these jobs (they are lost)
            log.exception("lease renewal failed for %s; counting their leases as lost", [c.job_id for c in pending])
            still = set()
        else:
            with self._lock:
                self._proven_at = asked_at
        with self._lock:  # a job settled while the renewal was on its way is finished, not lost
            gone = {c.job_id for c in pending if self._held.get(c.job_id) == c} - still - self._finished
            self._lost |= gone
        if gone:
            log.warning("lost leases of jobs %s", sorted(gone))
