"""Group commit for single submissions: one transaction and one broker pipeline for many requests.

Under load, hundreds of requests a second each paying for a transaction (and its fsync) and a broker round
trip is what limits throughput. `JobIntake.write(new)` hands the job to one writer thread per process and
blocks until it is stored and enqueued; the writer takes everything that arrived while it was busy with the
previous group and writes it with `JobStore.create_many` (one insert, one commit) and `Enqueuer.enqueue` (one
pipelined send, one `mark_enqueued`). Idle, a group is a single job and adds no waiting; busy, groups grow by
themselves. Requests are validated before they get here (api.intake.json_limits refuses what the database would), but
if a group insert fails anyway its rows are retried one by one, so each request gets its own answer and one
tenant's bad row never fails another's; a job stored but not sent is re-enqueued by the sweeper, as everywhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from api.enqueue import Enqueuer
from storage.errors import Unavailable
from storage.jobs.store import JobStore
from storage.records import JobRecord, NewJob

log = logging.getLogger(__name__)

MAX_GROUP = 256
MAX_QUOTA_OWNERS = 10_000
RESULT_TIMEOUT_SECONDS = 120.0


class JobIntake:
    """Stores and enqueues single submissions in groups (a daemon writer thread, started on first use)."""

    def __init__(self, jobs: JobStore, enqueuer: Enqueuer, max_group: int = MAX_GROUP) -> None:
        self.jobs = jobs
        self.enqueuer = enqueuer
        self.max_group = max_group
        self._pending: list[tuple[NewJob, Future[JobRecord]]] = []
        self._quotas: dict[str, int] = {}  # owner id -> most active jobs, checked exactly in the insert
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def write(self, new: NewJob, quota: int | None = None) -> JobRecord:
        """Store and enqueue one job; returns its record once both are done (raises what the write raised).
        With `quota`, the insert refuses (`storage.lifecycle.quota.QuotaExceeded`) to take the owner past that many
        queued and running jobs."""
        future: Future[JobRecord] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("intake is closed")
            if quota is not None:
                if len(self._quotas) > MAX_QUOTA_OWNERS:
                    self._quotas.clear()
                self._quotas[new.owner_id] = quota
            self._pending.append((new, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unipic-intake", daemon=True)
                self._thread.start()
            self._ready.notify()
        try:
            return future.result(timeout=RESULT_TIMEOUT_SECONDS)
        except TimeoutError:
            raise Unavailable("the database did not store the job in time; retry") from None

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending and self._closed:
                    return
                group, self._pending = self._pending[: self.max_group], self._pending[self.max_group:]
            self._write_group(group)

    def _write_group(self, group: Sequence[tuple[NewJob, Future[JobRecord]]]) -> None:
        try:
            with self._ready:
                quotas = {n.owner_id: self._quotas[n.owner_id] for n, _ in group if n.owner_id in self._quotas}
            _, records = self.jobs.create_many([new for new, _ in group], quotas=quotas)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request(s)
            log.warning("group insert of %d jobs failed: %s", len(group), exc)
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            # never join two requests' fates: one row the database refuses must not fail its group-mates
            for item in group:
                self._write_group([item])
            return
        self.enqueuer.enqueue([r.ref for r in records], mark_later=True)  # failures are logged there; the sweeper re-sends
        for (_, future), record in zip(group, records, strict=True):
            future.set_result(record)

    def close(self) -> None:
        """Finish what is pending and stop the writer (`open` starts over, e.g. on the next app startup)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def open(self) -> None:
        with self._ready:
            self._closed = False
            self._thread = None
