"""A gateway worker's cancel hints: one `cancels` long-poll in flight (`api.gateway.routes`) instead of a cancel
read every sampling step.

A running set over the gateway read its jobs' cancel requests about once a step (an HTTPS request and a Postgres
read each): for a fleet of remote workers, thousands of requests a second that almost always answer "none". The
gateway's `cancels` route answers as soon as one of this worker's running jobs has a cancel request, waking on the
API's cancel hints, so one poll in flight covers every job the worker holds, also those claimed after it was sent;
a new one follows each answer while a batch runs and for LINGER_SECONDS after. Its first read sees every request
made before it was sent, so a chain of polls covers the worker from the first one's sending (`trusted_since`), as
long as each answer says the gateway was `watching` (its event subscription live and trusted). An answer that says
not, a failed poll or a gateway that restarts breaks the chain: the watchers are told to read now (a resync) and
read by their pace meanwhile, and a poll that does not wait (a probe) asks every RETRY_SECONDS, less and less
often while no batch listens, whether the gateway watches again. A gateway without the route (404) gets no polls:
the watchers read as before.

The answers feed the same `HintBook` as a direct worker's Redis hints, so `BackgroundCancelWatcher` treats both
alike. Knows nothing of the runner's loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

from workers.runner.wakeups import HintBook

log = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 5.0  # how long one poll is held when nothing is canceled: an API process that stops waits
# for the requests it holds (as for the claim long-poll, whose wait is as long), which bounds what it adds to a restart
LINGER_SECONDS = 30.0  # polls go on this long after the last batch stopped listening (the next one is near), then
# stop until a batch listens again: an idle worker costs the gateway nothing
RETRY_SECONDS = 1.0  # after an answer that says the gateway does not watch, or a failed poll: while a batch
# listens (it reads every step meanwhile, so a probe a second costs little and ends that soon after a Redis restart);
MAX_RETRY_SECONDS = 30.0  # else doubling up to this (an idle worker of an API without Redis probes twice a minute)
MIN_POLL_GAP_SECONDS = 0.05  # polls answered at once (cancels found) follow each other no faster
KNOWN_SENT = 256  # hinted ids sent back as `known` (a worker holds at most 256 jobs)


class CancelPollsUnsupported(RuntimeError):
    """The gateway has no `cancels` route (an older API)."""


class StopPolling(RuntimeError):
    """The poll cannot go on (the worker token was revoked)."""


Poll = Callable[[list[str], float], tuple[list[str], bool]]  # (known ids, wait seconds) -> (canceled, watching)


class GatewayCancelPolls(HintBook):
    """Cancel hints from a chain of `cancels` long-polls, on one daemon thread per worker process. Each poll reads
    the worker's cancel requests when it starts (at least every POLL_WAIT_SECONDS), so a hint the gateway never
    heard is found by the next poll: watchers need no reads of their own (`rereads`)."""

    rereads = True

    def __init__(self, poll: Poll, wait_seconds: float | None = None) -> None:
        super().__init__()
        self._poll = poll
        self._wait = POLL_WAIT_SECONDS if wait_seconds is None else wait_seconds
        self._trusted_since: float | None = None
        self._stop = threading.Event()
        self._wanted = threading.Event()  # a watcher listens (polls resume)
        self._last_listened = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cancel-polls", daemon=True)
        self.polls = 0  # answered polls (tests and benchmarks count them)
        self.idle = False  # polling stopped: no watcher listened for LINGER_SECONDS

    @property
    def trusted_since(self) -> float | None:
        """When the current chain of watching polls began (monotonic); None while no poll is known to watch."""
        return self._trusted_since

    def listen(self, listener: Callable[[list[str] | None], None]) -> None:
        super().listen(listener)
        self._wanted.set()

    def unlisten(self, listener: Callable[[list[str] | None], None]) -> None:
        super().unlisten(listener)
        self._last_listened = time.monotonic()

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling. The poll in flight is ended by a probe (a newer poll of this worker supersedes it on the
        same API process), so the thread is not left waiting for it."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wanted.set()
        if self._thread.is_alive():
            try:
                self._poll([], 0.0)
            except Exception:  # the held poll then ends at its wait
                log.debug("the closing probe failed", exc_info=True)
            self._thread.join(5)

    def _run(self) -> None:
        watching = False  # what the last answer said: the next poll waits only then (else it is a probe)
        pause = RETRY_SECONDS
        while not self._stop.is_set():
            if self._idle():
                watching, pause = False, RETRY_SECONDS
                continue
            sent = time.monotonic()
            if watching and self._trusted_since is None:
                self._trusted_since = sent  # its first read sees every cancel asked before it was sent
            try:
                found, watching = self._poll(self.recent(KNOWN_SENT), self._wait if watching else 0.0)
            except CancelPollsUnsupported:
                log.info("the gateway has no cancels route: cancel requests are read every step")
                self._distrust()
                return
            except StopPolling:
                self._distrust()
                return
            except Exception as exc:  # noqa: BLE001 - the watchers read for themselves meanwhile
                log.warning("a cancel poll failed (%s); watchers read cancel requests until the next one", exc)
                found, watching = [], False
            self.polls += 1
            if self._stop.is_set():
                watching = False
            if found:
                self._tell(found)
            if not watching:
                self._distrust()
                self._stop.wait(pause)
                pause = RETRY_SECONDS if self.listened else min(MAX_RETRY_SECONDS, 2 * pause)
                continue
            pause = RETRY_SECONDS
            if time.monotonic() - sent < MIN_POLL_GAP_SECONDS:
                self._stop.wait(MIN_POLL_GAP_SECONDS)

    def _idle(self) -> bool:
        """No watcher listened for LINGER_SECONDS: stop polling (the chain breaks) until one listens. True when
        it waited."""
        if self.listened:
            self._last_listened = time.monotonic()
            return False
        if time.monotonic() - self._last_listened < LINGER_SECONDS:
            return False
        self._distrust()
        self._wanted.clear()
        if not self.listened:
            self.idle = True
            self._wanted.wait()
            self.idle = False
        return True

    def _distrust(self) -> None:
        """The chain broke: cancels since its last answer may not have been told; the watchers read now."""
        if self._trusted_since is not None:
            self._trusted_since = None
            self._tell(None)
