"""A process's job events go out on their own thread, so no committing thread waits for Redis.

`RedisPublisher.publish` runs after each commit (`storage.jobs.events.attach`). Called there, it held the thread that
committed for the round trip, and for a whole socket timeout (1 s) when Redis stopped answering without refusing
(a network partition): every API request that changed a job, a worker's sampling thread on its claims, cancels and
failures, once per quiet spell of the publisher (`PAUSE_AFTER_FAILURE_S`). `BackgroundPublisher` hands each
transaction's events to one thread instead, which publishes them in commit order, the events of every call waiting
then in one pipeline. Nothing else changes for a reader: events were hints that can be late or lost, and lost ones
are still told (a resync with the next publish).

What the process itself must know at once is told synchronously, before the events are queued: `listen_locally`
(the API's event hub counts its own process's queue wake-ups at the commit, so a claim that comes before the
message reaches the subscription still reads a queue a look had just found empty: `api.events.hub`).

At most `max_pending` transactions wait; past that their events are dropped and counted as lost (Redis that slow is
as good as down). A fork gets a fresh, empty hand-over (the thread does not survive it); what waits at exit is sent
within FLUSH_SECONDS (`close`, and at interpreter exit).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.jobs.events import RedisPublisher

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # transactions whose events wait for the thread
FLUSH_SECONDS = 2.0  # what waits at close or exit goes out within this (then it is dropped)
IDLE_SECONDS = 10.0  # the thread ends after this long with nothing to send

Events = Sequence[dict[str, Any]]


class BackgroundPublisher:
    """A `Publisher` whose `publish` returns at once; `inner` publishes on this object's thread, in call order."""

    def __init__(self, inner: RedisPublisher, max_pending: int = MAX_PENDING) -> None:
        self.inner = inner
        self.max_pending = max_pending
        self._local: list[Callable[[Events], None]] = []
        self.dropped = 0  # events dropped because too many transactions waited
        self._fresh()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _call(me, "_fresh"))
        atexit.register(_call, me, "close")

    def _fresh(self) -> None:
        """Nothing handed over, no thread (at start, and in a forked child: the parent's thread is not there)."""
        self._cond = threading.Condition()
        self._pending: deque[Events] = deque()
        self._sending = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def listen_locally(self, listener: Callable[[Events], None]) -> None:
        """Also tell `listener` of every transaction's events, on the committing thread, before they are queued
        (it must be quick and must not raise)."""
        self._local.append(listener)

    def publish(self, events: Events) -> None:
        if not events:
            return
        for listener in self._local:
            try:
                listener(events)
            except Exception:  # a listener's bug must not fail (or undo) the commit
                log.exception("a local job-event listener failed")
        with self._cond:
            if len(self._pending) >= self.max_pending:
                self.dropped += len(events)
                self.inner.mark_lost()
                return
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="job-events", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # the interpreter is shutting down: no new threads; publish here
                    self.inner.publish(events)
                    return
                self._thread, self._stopping = thread, False
            self._pending.append(events)
            self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._stopping, IDLE_SECONDS)
                    if not self._pending:  # stopping or idle, and everything went out: the next publish starts one
                        self._thread = None  # under the lock: a publish from now on sees no thread
                        return
                    calls, self._sending = list(self._pending), True
                    self._pending.clear()
                try:
                    self.inner.publish([event for call in calls for event in call])
                finally:
                    with self._cond:
                        self._sending = False
                        self._cond.notify_all()
        finally:
            with self._cond:  # ended by an error: the next publish starts a thread (never a queue nobody drains)
                if self._thread is threading.current_thread():
                    self._thread = None

    def flush(self, timeout: float) -> bool:
        """Wait until every event handed over so far went out (or failed); False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout)

    def close(self) -> None:
        """Send what waits (within FLUSH_SECONDS) and end the thread; a later `publish` starts another."""
        if not self.flush(FLUSH_SECONDS):
            log.warning("job events still waiting after %.0fs at close: dropped", FLUSH_SECONDS)
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()


def _call(ref: weakref.ref[BackgroundPublisher], method: str) -> None:
    """Call `method` of the publisher `ref` names, if it still exists (fork and exit hooks outlive it)."""
    publisher = ref()
    if publisher is not None:
        getattr(publisher, method)()
