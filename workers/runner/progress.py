"""Progress reports and cancellation checks of a running batch, both throttled.

`ProgressReporter` is the engine's `progress(ids, step, total)` callback: it forwards step/total per job to the
store at most every `interval` per job, from a background thread (the sampler never waits on a write).
`BackgroundCancelWatcher` is the engine's `should_cancel()`: it asks the store which jobs of the batch have a
cancel request, off the sampling thread (when a cancel hint is heard, else about once a step), and merges in the
jobs the batch must drop for its own reasons (lost leases, time limit, shutdown). Neither knows the model;
errors here are logged and never fail a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Self

from storage.records import Claim
from workers.transport.base import CancelHintSource, JobPort

log = logging.getLogger(__name__)


class ProgressReporter:
    """Throttled per-job progress, written by a background thread so the sampler never waits on the database."""

    def __init__(
        self,
        store: JobPort,
        claims: Mapping[str, Claim],
        interval_seconds: float,
        on_step: Callable[[], None] | None = None,
        totals: Mapping[str, int] | None = None,
    ) -> None:
        self._store = store
        self._claims = claims
        self._totals = totals or {}  # each job's own step count: a shared call's total is reported in its terms
        self._interval = interval_seconds
        self._last: dict[str, float] = {}
        self._on_step = on_step
        self._pending: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="progress-writer", daemon=True)
        self.fraction = 0.0  # of the current model call, for the shutdown estimate

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True  # what is still pending is superseded by the jobs' final states
        self._wake.set()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        """A new model call starts (e.g. after an out-of-memory split)."""
        self.fraction = 0.0

    def __call__(self, ids: list[str], step: int, total: int) -> None:
        if self._on_step is not None:
            self._on_step()
        if total > 0:
            self.fraction = max(self.fraction, min(1.0, step / total))
        now = time.monotonic()
        due = [j for j in ids if j in self._claims and now - self._last.get(j, float("-inf")) >= self._interval]
        if not due:
            return
        with self._lock:
            for job_id in due:
                self._last[job_id] = now
                own = self._totals.get(job_id, total)
                self._pending[job_id] = (min(step, own), own)
        self._wake.set()

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                batch, self._pending = self._pending, {}
            reports = [(self._claims[job_id], step, total) for job_id, (step, total) in batch.items()
                       if job_id in self._claims]
            if not reports:
                continue
            try:  # the jobs of a step in one write: one transaction, each row fenced by its own lease
                self._store.set_progress_many(reports)
            except Exception:  # progress is best effort
                log.exception("progress update failed for jobs %s", sorted(batch))


class CancelWatcher:
    """Which watched jobs have a cancel request, as of the last store check (`check`); the reads' schedule and
    the answer merged with a batch's local reasons are `BackgroundCancelWatcher`'s."""

    def __init__(
        self,
        store: JobPort,
        job_ids: Iterable[str],
        interval_seconds: float = 0.25,
        local: Callable[[], set[str]] = set,
        on_requested: Callable[[set[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._ids = list(job_ids)
        self._interval = interval_seconds
        self._local = local
        # told (under the lock, on the thread that learned it: a read's or a hint's) of watched jobs newly found
        # canceled, before any answer includes them: a running set claims the rows they will free
        self._on_requested = on_requested
        self._requested: set[str] = set()
        self._check_started = 0.0  # when the last store check began
        self._read_through = 0.0  # when the last store check that has answered began
        self._lock = threading.Lock()
        self._read_ended = threading.Condition(self._lock)  # a check ended (answered or failed)
        self._reads_ended = 0

    @property
    def requested(self) -> set[str]:
        """Jobs whose owner asked to cancel them (as of the last check)."""
        with self._lock:
            return set(self._requested)

    def watch(self, job_ids: Iterable[str]) -> None:
        """Also check these jobs (admitted into a running set after the watcher started)."""
        with self._lock:
            self._ids.extend(job_ids)

    def unwatch(self, job_ids: Iterable[str]) -> None:
        """Stop checking these jobs (they left the running set): a loop over a long backlog would otherwise ask
        about every job it ever ran, each time."""
        gone = set(job_ids)
        with self._lock:
            self._ids = [j for j in self._ids if j not in gone]
            self._requested -= gone

    def check(self) -> None:
        """Ask the store now which watched jobs have a cancel request."""
        started = self._check_started = time.monotonic()
        with self._lock:
            pending = [j for j in self._ids if j not in self._requested]
        if not pending:
            self._answered(started)
            return
        try:
            found = set(self._store.cancel_requested_ids(pending))
        except Exception:
            log.exception("cancel check failed for %s", pending)
            self._answered(None)
            return
        with self._lock:
            self._found(found & set(self._ids))  # not one unwatched meanwhile
        self._answered(started)

    def _found(self, requested: set[str]) -> None:
        """(under the lock) These watched jobs have a cancel request: in every answer from now on."""
        new, self._requested = requested - self._requested, self._requested | requested
        if new and self._on_requested is not None:
            self._on_requested(new)

    def _answered(self, started: float | None) -> None:
        """A check ended: answered as of when it `started`, or failed (None)."""
        with self._lock:
            if started is not None:
                self._read_through = max(self._read_through, started)
            self._reads_ended += 1
            self._read_ended.notify_all()


MIN_CANCEL_POLL_SECONDS = 0.02
MAX_CANCEL_POLL_SECONDS = 0.25
HINTED_CHECK_SECONDS = 1.0  # with cancel hints heard, a read this often anyway (a hint can be lost)
IN_FLIGHT_WAIT_SECONDS = 1.0  # the loop waits this long for a background read on its way, then reads itself


class BackgroundCancelWatcher(CancelWatcher):
    """A `CancelWatcher` whose store checks run on its own thread every `interval_seconds` (then about once a
    step: `pace`), so a running set's loop reads the latest answer between two steps without a query on the
    sampling thread (one per step there cost as much as a small step on a busy CPU).

    With `hints` (a direct worker with Redis: `workers.runner.wakeups.CancelHints`; a gateway worker's cancel
    long-polls: `workers.transport.gateway_cancels`) it reads when a cancel of a job it watches is heard, and
    otherwise only every HINTED_CHECK_SECONDS (a hint can be lost: Redis pub/sub keeps nothing for a publisher
    that failed): one read a second instead of one a step, which for a fleet of busy workers is thousands of
    reads a second for nothing; not even that with hints that re-read the truth themselves (`rereads`: each
    gateway poll reads when it starts). While the hints are not trusted, or since they were no read was made, it
    polls by its pace as without hints. `local`: the batch's own reasons to drop jobs, merged into every answer."""

    def __init__(self, store: JobPort, interval_seconds: float, hints: CancelHintSource | None = None,
                 local: Callable[[], set[str]] = set,
                 on_requested: Callable[[set[str]], None] | None = None) -> None:
        # hints are trusted from `hints.trusted_since`: for Redis, a few seconds after (re)subscribing, when a
        # publisher that failed in the same Redis restart speaks again (and its first message is a resync: read now)
        super().__init__(store, [], interval_seconds, local, on_requested)
        self._hints = hints
        self._hint_at = 0.0  # when the last hint naming a watched job came (monotonic)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watcher", daemon=True)

    def __enter__(self) -> BackgroundCancelWatcher:
        if self._hints is not None:
            self._hints.listen(self._heard)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hints is not None:
            self._hints.unlisten(self._heard)
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def __call__(self, since: float | None = None) -> set[str]:
        """The latest answer; checked here first when no answered check began after `since` (the loop passes
        the start of its last step: a cancel requested before that step ended is seen now, even after a step
        far longer than the pace) and no live hint subscription covers the time since, or when a hint named a
        watched job after the last answered check began (the background read it started may still be on its
        way: the cancel heard during the step is seen now, not a step later)."""
        if since is not None:
            with self._lock:
                needed = self._read_needed(since)
                if needed is not None and self._check_started >= needed:  # the read is on its way: its answer
                    ended = self._reads_ended  # is waited for rather than asked twice
                    self._read_ended.wait_for(lambda: self._reads_ended > ended, IN_FLIGHT_WAIT_SECONDS)
                    needed = self._read_needed(since)
            if needed is not None:
                self.check()
        with self._lock:
            return self._requested | self._local()

    def _read_needed(self, since: float) -> float | None:
        """(under the lock) The time a read must have begun after for the answer to be current: the last hint of a
        watched job, or `since` when no hint subscription covers it; None when the last answer is current."""
        if self._hint_at > self._read_through:
            return self._hint_at
        if self._read_through < since and not self._covered(self._read_through):
            return since
        return None

    def watch(self, job_ids: Iterable[str], claimed_after: float | None = None) -> None:
        """Also check these jobs, claimed after `claimed_after` (monotonic; None: not known). The claim cleared
        their cancel requests, so hints cover them only if the subscription was live since then: else, or when
        a hint named one of them before it was watched (canceled just after its claim), they are read now."""
        job_ids = list(job_ids)
        with self._lock:
            first = not self._ids  # nothing else watched: nothing else's coverage depends on `_check_started`
        super().watch(job_ids)  # watched before `heard` is asked: a hint in between is seen by one of the two
        if self._hints is None:
            return
        live = self._hints.trusted_since
        heard = self._hints.heard(job_ids)
        if live is None or claimed_after is None or live > claimed_after:
            self._heard(None)  # read them now
        elif heard:
            self._heard(sorted(heard))
        elif first and self._check_started < claimed_after:
            self._check_started = claimed_after  # the claim cleared their requests: as good as a read then
            self._answered(claimed_after)

    def pace(self, seconds: float) -> None:
        """Check about this often from now on (the loop passes its step time: a cancel lands within a step or
        two, at one query per step, however long steps are)."""
        self._interval = min(MAX_CANCEL_POLL_SECONDS, max(MIN_CANCEL_POLL_SECONDS, seconds))

    def _heard(self, job_ids: list[str] | None) -> None:
        """A hint (None: a resync, any cancel may have been missed): read now; or, from hints that are reads'
        answers (`rereads`: a gateway poll's), taken as read: the worker saves a round trip per cancel."""
        with self._lock:
            if job_ids is not None:
                named = {j for j in job_ids if j in self._ids}
                if not named:
                    return
                if self._hints is not None and self._hints.rereads:
                    self._found(named)
                    return
            self._hint_at = time.monotonic()
        self._wake.set()

    def _covered(self, read: float | None = None) -> bool:
        """Whether hints would have told of any cancel since a read began (`read`; default: the last check's
        start): a subscription live since before it, and no hint of a watched job after it."""
        read = self._check_started if read is None else read
        live = self._hints.trusted_since if self._hints is not None else None
        return live is not None and live <= read and self._hint_at <= read

    def _due(self) -> float | None:
        """When to read next; None: not until a hint (the hints re-read the truth themselves)."""
        if self._hint_at > self._check_started:
            return self._hint_at  # at once
        if not self._covered():
            return self._check_started + self._interval
        if self._hints is not None and self._hints.rereads:
            return None
        return self._check_started + HINTED_CHECK_SECONDS

    def _run(self) -> None:
        while not self._stop.is_set():
            due = self._due()
            wait = None if due is None else due - time.monotonic()
            if wait is None or wait > 0:
                self._wake.wait(wait)  # a hint, a resync or lost trust (told as a resync) wakes it
                self._wake.clear()
                continue  # woken by a hint or the pace changed: what is due is worked out again
            self.check()
