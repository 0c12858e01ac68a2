"""Job and batch events for one API process: one Redis subscription, fanned out in memory to the waiters.

Workers and the store publish every job event after its transaction commits (`storage.jobs.events`). This
process holds ONE pattern subscription to all job and batch channels (`redis.asyncio`) and hands each message
to the `Watch`es registered for its job or batch: event streams and `?wait=` long-polls. A watch never buffers
without limit: events are coalesced per job (the latest wins: a waiter re-reads Postgres, the truth, anyway), and
a watch whose events have not been taken for `slow_after_s` (a client that stopped reading) or that holds more than
`max_pending` jobs is dropped, which ends its stream. When the subscription breaks (a Redis restart) the reader
reconnects with backoff, and every watch is told to resync (re-read its rows) once the subscription is back, since
messages published meanwhile are lost; streams also reconcile on a slow jittered timer of their own.

Without Redis (embedded mode) or with `UNIPIC_EVENTS_MODE=poll` there is no subscription: a watch only times out,
and its waiter polls Postgres on its tick (the old mechanism, kept for the embedded mode and for comparison).
Limits are counted in both modes: at most `max_streams` watches per process and `max_per_key` per API key, else
`TooManyStreams` (429).

Queue wake-ups (`{"type": "queued", "queue", "jobs": n}` on a queue's channel) go to the gateway's long-polling
claims (`QueueWaiter`s): each message wakes at most `n` waiters of its queue, the longest waiting first (one per
new job, not the whole herd: a woken claim that finds its job gone simply waits again). The hub also remembers,
per queue, that a claim looked and found it empty while subscribed with no wake-up since (`begin_look` /
`end_look`): other waiters then skip that queue until a wake-up, a resync or `fresh_s` (the safety tick) has
passed, so an idle fleet costs the database about one look per queue per tick per process, whatever its size.
While one claim reads a queue not known to hold work, claims that come meanwhile wait for that read's outcome
(`settled`) instead of reading too: empty, they skip it; it took jobs, they read it at once (a queue whose last
read took jobs is a backlog, and every claim reads it without waiting on another).
Cancel long-polls of gateway workers (`CancelPoll`, one per worker id: a newer one from the same worker ends the
older) are woken by a cancel hint naming their worker (`{"type": "cancel", "job_ids", "workers"}` on the cancel
channel), by a publisher's resync and by every resync of the subscription itself; `trusted` says whether the
subscription has been live long enough that no publisher is still quiet after a Redis restart
(`storage.jobs.events.TRUST_HINTS_AFTER_S`), i.e. whether a poll may wait on hints at all.
When the process stops (`drain`, on SIGTERM through `api.draining`), every waiter of each kind ends at once, and one
registered after that ends as it begins, so no held request keeps the server from stopping.
Knows nothing of HTTP routes, rendering or Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.background import stop_task
from storage.jobs.events import CHANNEL_PREFIX, TRUST_HINTS_AFTER_S, channel_pattern, channel_prefix
from storage.settings import Settings

if TYPE_CHECKING:  # redis is imported when the subscription starts
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # per close of the Redis subscription or client

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0
SLOW_AFTER_S = 30.0
MAX_PENDING = 20_000


class TooManyStreams(Exception):
    """Opening one more watch would pass a limit (`scope`: "key" or "process")."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"too many open event streams for this {scope} (limit {limit})")
        self.scope = scope
        self.limit = limit


@dataclass
class Wake:
    """What a waiter got: the latest event per job since it last looked, and whether to resync everything."""

    events: list[dict[str, Any]] = field(default_factory=list)
    resync: bool = False
    dropped: bool = False

    @property
    def empty(self) -> bool:
        return not self.events and not self.resync and not self.dropped


class Watch:
    """One waiter's registration for some job and batch channels. Use as a context manager (closes itself)."""

    def __init__(self, hub: EventHub, owner_id: str, keys: list[str]) -> None:
        self.hub = hub
        self.owner_id = owner_id
        self.keys = keys
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_since: float | None = None
        self._resync = False
        self.dropped = False
        self._wake = asyncio.Event()
        self._closed = False

    def deliver(self, event: dict[str, Any], now: float) -> bool:
        """Hand one event over (the hub's reader); False when this watch is too far behind and was dropped."""
        if self._pending_since is not None and now - self._pending_since > self.hub.slow_after_s \
                or len(self._pending) >= self.hub.max_pending:
            self.dropped = True
            self._wake.set()
            return False
        self._pending[str(event.get("job_id"))] = event
        if self._pending_since is None:
            self._pending_since = now
        self._wake.set()
        return True

    def end(self) -> None:
        """The process stops: the waiter ends now, as for a dropped watch (a stream closes and its client
        reconnects, reaching another process; a `?wait=` answers what it has)."""
        self.dropped = True
        self._wake.set()

    def resync(self) -> None:
        """Messages may have been lost: the waiter should re-read everything it watches."""
        self._resync = True
        self._wake.set()

    async def wait(self, timeout: float) -> Wake:
        """The next events (coalesced), a resync, a drop, or an empty `Wake` after `timeout` seconds."""
        if not (self._pending or self._resync or self.dropped):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
        self._wake.clear()
        wake = Wake(list(self._pending.values()), self._resync, self.dropped)
        self._pending, self._pending_since, self._resync = {}, None, False
        return wake

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub.release(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueueWaiter:
    """One long-polling claim's registration for its queues' wake-ups. Use as a context manager."""

    def __init__(self, hub: EventHub, queues: list[str], observer: bool = False) -> None:
        self.hub = hub
        self.queues = queues
        self.observer = observer  # woken by every wake-up and never counted (a look for a newcomer, which passes
        # over most jobs: it must not take a wake-up from a claim that would claim the job)
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def woken(self) -> bool:
        return self._wake.is_set()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        """True when woken (a job may be claimable), False after `timeout`; re-arms either way."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
        woken = self._wake.is_set()
        self._wake.clear()
        if woken:  # to the back of the line: the next wake-up goes to one that waited longer
            self.hub.requeue_waiter(self)
        return woken

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub.release_waiter(self)
            if self._wake.is_set() and not self.observer:  # woken as it ended (its wait ran out): the wake-up
                # goes to another waiter
                for queue in self.queues:
                    self.hub.wake_queue(queue, 1, count=False)

    def __enter__(self) -> QueueWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CancelPoll:
    """One gateway worker's cancel long-poll: woken (`reason`) by a cancel of one of its worker's jobs
    ("cancel"), a resync ("resync": hints may have been lost), a newer poll of the same worker ("superseded") or
    the hub stopping ("closing"). Use as a context manager."""

    def __init__(self, hub: EventHub, worker_id: str) -> None:
        self.hub = hub
        self.worker_id = worker_id
        self.reason: str | None = None
        self._wake = asyncio.Event()
        self._closed = False

    def wake(self, reason: str) -> None:
        if self.reason not in ("superseded", "closing"):  # an ending is never taken back by a later cancel
            self.reason = reason
        self._wake.set()

    async def wait(self, timeout: float) -> str | None:
        """Why it was woken, or None after `timeout`; re-arms (an ending stays: it is returned again)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
        reason = self.reason
        if reason not in ("superseded", "closing"):
            self.reason = None
            self._wake.clear()
        return reason

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub.release_cancel_poll(self)

    def __enter__(self) -> CancelPoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Reading:
    """One claim's read of one queue, in flight: when it is over, whether it found the queue empty."""

    state: tuple[int, int]  # (wake-ups of the queue, generation) when it began
    done: asyncio.Event = field(default_factory=asyncio.Event)
    empty: bool = False


@dataclass(frozen=True)
class Look:
    """A claim's look at some queues: which to read, the wake-up counts when it began, its own reads in flight
    (others may wait on them) and the reads of other claims it waits on instead of reading those queues itself."""

    queues: list[str]
    seen: dict[str, int]
    generation: int
    mine: dict[str, Reading] = field(default_factory=dict)
    pending: list[Reading] = field(default_factory=list)


class EventHub:
    """The process's one subscription and its waiters (all on the event loop that serves requests)."""

    def __init__(self, redis_url: str, push: bool, max_streams: int, max_per_key: int,
                 slow_after_s: float = SLOW_AFTER_S, max_pending: int = MAX_PENDING) -> None:
        self.redis_url = redis_url
        self.push = push and bool(redis_url)
        self.max_streams = max_streams
        self.max_per_key = max_per_key
        self.slow_after_s = slow_after_s
        self.max_pending = max_pending
        self.prefix = channel_prefix(redis_url)
        self._by_key: dict[str, set[Watch]] = {}
        self._per_owner: Counter[str] = Counter()
        self._open = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed: asyncio.Event | None = None
        self.subscriptions = 0  # confirmed (re)subscriptions: 1 after start, +1 per reconnect
        self._queue_waiters: dict[str, dict[QueueWaiter, None]] = {}  # insertion order: longest waiting first
        self._queue_wakes: Counter[str] = Counter()  # wake-ups per queue so far
        self._empty_since: dict[str, tuple[int, int, float]] = {}  # queue -> (wakes, generation, when) seen empty
        self._looking: dict[str, Reading] = {}  # queue -> the read in flight others wait on
        self._has_work: set[str] = set()  # queues whose last read took jobs (a backlog: every claim reads them)
        self._generation = 0  # +1 per resync: what was known empty before may not be any more
        self._cancel_polls: dict[str, CancelPoll] = {}  # worker id -> its newest cancel long-poll
        self._live_since: float | None = None  # when the current subscription was confirmed (monotonic)
        self.closing = False  # the process stops (`drain`): every waiter ends, and one that comes ends at once
        self.cancel_wakeups = 0
        self.queue_wakeups = 0
        self.delivered = 0
        self.dropped = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> EventHub:
        return cls(settings.redis_url, settings.events_mode == "push", settings.events_max_streams,
                   settings.events_max_streams_per_key)

    # ---- waiters -------------------------------------------------------------------------------------------
    def watch(self, owner_id: str, job_ids: Iterable[str] = (), batch_ids: Iterable[str] = ()) -> Watch:
        """Register a waiter for these jobs and batches; `TooManyStreams` past a limit."""
        if self._open >= self.max_streams:
            raise TooManyStreams("process", self.max_streams)
        if self._per_owner[owner_id] >= self.max_per_key:
            raise TooManyStreams("key", self.max_per_key)
        self.ensure_started()
        keys = [f"job:{j}" for j in job_ids] + [f"batch:{b}" for b in batch_ids]
        watch = Watch(self, owner_id, keys)
        if self.closing:
            watch.end()
        self._open += 1
        self._per_owner[owner_id] += 1
        for key in keys:
            self._by_key.setdefault(key, set()).add(watch)
        return watch

    def release(self, watch: Watch) -> None:
        self._open -= 1
        self._per_owner[watch.owner_id] -= 1
        if self._per_owner[watch.owner_id] <= 0:
            del self._per_owner[watch.owner_id]
        for key in watch.keys:
            waiters = self._by_key.get(key)
            if waiters is not None:
                waiters.discard(watch)
                if not waiters:
                    del self._by_key[key]

    @property
    def open_streams(self) -> int:
        return self._open

    def open_for(self, owner_id: str) -> int:
        return self._per_owner.get(owner_id, 0)

    # ---- long-polling claims ----------------------------------------------------------------------------------
    def queue_waiter(self, queues: Iterable[str], observer: bool = False) -> QueueWaiter:
        """Register a claim waiting for any of `queues` (no stream limit: the gateway's callers are tokens);
        an `observer` hears every wake-up without using one up."""
        self.ensure_started()
        waiter = QueueWaiter(self, list(queues), observer)
        if self.closing:
            waiter.wake()
        for queue in waiter.queues:
            self._queue_waiters.setdefault(queue, {})[waiter] = None
        return waiter

    def waiting(self, queue: str) -> int:
        """How many claims wait on `queue` now."""
        return len(self._queue_waiters.get(queue, ()))

    def known_empty(self, queue: str, fresh_s: float) -> bool:
        """Whether a claim found `queue` empty within `fresh_s`, with no wake-up or resync since."""
        seen = self._empty_since.get(queue)
        return self.live and seen is not None and seen[:2] == (self._queue_wakes[queue], self._generation) \
            and time.monotonic() - seen[2] < fresh_s

    def release_waiter(self, waiter: QueueWaiter) -> None:
        for queue in waiter.queues:
            waiters = self._queue_waiters.get(queue)
            if waiters is not None:
                waiters.pop(waiter, None)
                if not waiters:
                    del self._queue_waiters[queue]

    def requeue_waiter(self, waiter: QueueWaiter) -> None:
        for queue in waiter.queues:
            waiters = self._queue_waiters.get(queue)
            if waiters is not None and waiters.pop(waiter, 0) is None:
                waiters[waiter] = None

    @property
    def live(self) -> bool:
        """Whether the subscription is up now (wake-ups arrive)."""
        return self.push and self._subscribed is not None and self._subscribed.is_set()

    def begin_look(self, queues: Iterable[str], fresh_s: float) -> Look:
        """The queues a claim should read now: all of them, less (only while live) those seen empty within
        `fresh_s` with no wake-up since, and those another claim is reading already when nothing says they hold
        work: this claim waits for that read's outcome instead (`settled`). A queue whose last read took jobs (a
        backlog) is read by every claim at once."""
        wanted = list(queues)
        seen = {q: self._queue_wakes[q] for q in wanted}
        mine: dict[str, Reading] = {}
        pending: list[Reading] = []
        if self.live:
            reading = []
            for q in wanted:
                if self.known_empty(q, fresh_s):
                    continue
                state, current = (seen[q], self._generation), self._looking.get(q)
                if current is not None and current.state == state and q not in self._has_work:
                    pending.append(current)
                    continue
                if current is None or current.state != state:
                    mine[q] = self._looking[q] = Reading(state)
                reading.append(q)
            wanted = reading
        return Look(wanted, seen, self._generation, mine, pending)

    def end_look(self, look: Look, empty: Iterable[str], took: str | None = None) -> None:
        """The look is over; `empty`: the queues it read and found with nothing claimable; `took`: the queue it
        claimed from (the queues it did not reach are neither)."""
        now = time.monotonic()
        empty = set(empty)
        for q, reading in look.mine.items():
            reading.empty = q in empty
            reading.done.set()
            if self._looking.get(q) is reading:
                del self._looking[q]
        self._has_work -= empty
        if took is not None:
            self._has_work.add(took)
        if not self.live or look.generation != self._generation:
            return
        for q in empty:
            if self._queue_wakes[q] == look.seen.get(q):
                self._empty_since[q] = (look.seen[q], look.generation, now)

    async def settled(self, look: Look, timeout: float) -> bool:
        """Wait (up to `timeout`) for the other claims' reads this look waits on; True when they are over and one
        of them did not find its queue empty (it took jobs, or did not reach it): the caller should look again
        now rather than wait for a wake-up. False when they all found their queues empty, or are not over."""
        if not look.pending:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in look.pending)), max(timeout, 0.0))
        return all(r.done.is_set() for r in look.pending) and not all(r.empty for r in look.pending)

    def wake_queue(self, queue: str, jobs: int, count: bool = True) -> None:
        """`jobs` became claimable in `queue`: wake that many of its waiters (the longest waiting first).
        `count=False` passes on a wake-up already counted (its waiter ended without using it)."""
        if count:
            self._count_wake(queue)
        waiters = self._queue_waiters.get(queue)
        if not waiters:
            return
        woken = 0
        for waiter in list(waiters):
            if waiter.observer:
                if count:
                    waiter.wake()
            elif woken < jobs and not waiter.woken:
                waiter.wake()
                woken += 1
        self.queue_wakeups += woken

    def _count_wake(self, queue: str) -> None:
        """A wake-up of `queue`: what a look found empty before it no longer counts (`known_empty`, `end_look`)."""
        self._queue_wakes[queue] += 1
        self._empty_since.pop(queue, None)

    def heard_locally(self, events: Sequence[dict[str, Any]]) -> None:
        """(any thread, at the commit) This process's own transaction made jobs claimable: the wake-up is counted
        now, without waking anyone (its message does that when it arrives). Its message goes out on the
        publisher's thread (`storage.jobs.publishing`), so a claim that comes first must not skip the queue a look
        had found empty just before the commit (`known_empty`), nor may a look that began before it end empty."""
        queues = [str(ev["queue"]) for ev in events if ev.get("type") == "queued"]
        loop = self._loop
        if not queues or loop is None:
            return

        def count() -> None:
            for queue in queues:
                self._count_wake(queue)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            count()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits to be told
            loop.call_soon_threadsafe(count)

    def dispatch(self, channel: str, data: bytes | str) -> None:
        """One message from Redis to the watches of its job or batch, or the claims waiting on its queue."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        key = name.removeprefix(self.prefix + CHANNEL_PREFIX)
        if key == "cancel":
            self._dispatch_cancel(data)
            return
        if key.startswith("queue:"):
            try:
                jobs = int(json.loads(data).get("jobs", 1))
            except (ValueError, AttributeError):
                jobs = 1
            self.wake_queue(key.removeprefix("queue:"), max(jobs, 1))
            return
        waiters = self._by_key.get(key)
        if not waiters:
            return
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("unreadable event on %s", name)
            return
        now = time.monotonic()
        for watch in list(waiters):
            if watch.deliver(event, now):
                self.delivered += 1
            else:
                self.dropped += 1
                log.warning("dropping a slow event stream of key %s (%s)", watch.owner_id, key)
                waiters.discard(watch)

    def resync_all(self) -> None:
        self._generation += 1  # wake-ups may have been lost: nothing is known empty; one claim per queue looks
        self._empty_since.clear()
        for queue in list(self._queue_waiters):
            self.wake_queue(queue, 1)
        for waiters in list(self._by_key.values()):
            for watch in list(waiters):
                watch.resync()
        self._wake_cancel_polls(None, "resync")

    # ---- gateway workers' cancel long-polls ---------------------------------------------------------------------
    def cancel_poll(self, worker_id: str) -> CancelPoll:
        """Register `worker_id`'s cancel long-poll; an older one of the same worker in this process ends
        ("superseded": the worker sent a new one, so nobody waits for the old answer)."""
        self.ensure_started()
        poll = CancelPoll(self, worker_id)
        older = self._cancel_polls.get(worker_id)
        if older is not None:
            older.wake("superseded")
        self._cancel_polls[worker_id] = poll
        if self.closing:
            poll.wake("closing")
        return poll

    def holds_cancel_poll(self, worker_id: str) -> bool:
        """Whether a cancel long-poll of `worker_id` waits here now."""
        return worker_id in self._cancel_polls

    def release_cancel_poll(self, poll: CancelPoll) -> None:
        if self._cancel_polls.get(poll.worker_id) is poll:
            del self._cancel_polls[poll.worker_id]

    def _wake_cancel_polls(self, workers: Iterable[str] | None, reason: str) -> None:
        """Wake the polls of `workers` (None: every poll)."""
        polls = list(self._cancel_polls.values()) if workers is None else \
            [p for w in workers if (p := self._cancel_polls.get(w)) is not None]
        for poll in polls:
            poll.wake(reason)
        self.cancel_wakeups += len(polls)

    def _dispatch_cancel(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            workers = None if message.get("type") == "resync" else [str(w) for w in message.get("workers", [])]
        except (ValueError, AttributeError, TypeError):
            log.warning("unreadable cancel hint")
            workers = None  # read again rather than miss one
        self._wake_cancel_polls(workers, "resync" if workers is None else "cancel")

    @property
    def trusted(self) -> bool:
        """Whether every cancel is heard now: the subscription is live and has been for TRUST_HINTS_AFTER_S (a
        publisher that failed in the same Redis restart stays quiet that long, then sends a resync)."""
        return self.live and self._live_since is not None \
            and time.monotonic() - self._live_since >= TRUST_HINTS_AFTER_S

    # ---- the subscription ----------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the reader on the running loop (idempotent; a server started without lifespan starts it here)."""
        if not self.push:
            return
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._subscribed = asyncio.Event()
        self._task = loop.create_task(self._run(self._subscribed), name="event-hub")

    async def ready(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until the subscription is live, so a waiter that reads its row next misses
        nothing published after that read; False when it is not (Redis down: the waiter reconciles instead)."""
        if not self.push:
            return False
        self.ensure_started()
        assert self._subscribed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self._subscribed.is_set()

    async def start(self) -> None:
        self.ensure_started()

    def drain(self) -> None:
        """The process is stopping (`api.draining`: SIGTERM, before the server waits for open requests): every
        held request ends now instead of holding the stop for as long as it may wait (an event stream for hours,
        a `?wait=` for a minute): streams close (clients reconnect, to another process behind the balancer),
        `?wait=` and claim long-polls answer what they have, cancel polls answer "closing". A waiter that
        registers after this ends at once."""
        if not self.closing:
            log.info("stopping: ending %d event streams and waits, %d claim and %d cancel long-polls",
                     self._open, len({w for ws in self._queue_waiters.values() for w in ws}), len(self._cancel_polls))
        self.closing = True
        for waiters in list(self._by_key.values()):
            for watch in list(waiters):
                watch.end()
        for queue_waiters in list(self._queue_waiters.values()):
            for waiter in list(queue_waiters):
                waiter.wake()
        self._wake_cancel_polls(None, "closing")  # held polls answer now: the worker asks another process

    async def stop(self) -> None:
        self.drain()  # the lifespan ends (a server that drained already, or a test client): nothing waits on
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self, subscribed: asyncio.Event) -> None:
        import redis.asyncio as aioredis

        backoff = RECONNECT_MIN_S
        while True:
            client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2, health_check_interval=15)
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(channel_pattern(self.prefix))
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "pmessage":
                        self.dispatch(message["channel"], message["data"])
                    elif kind == "psubscribe":  # (re)subscribed: what was published meanwhile is lost
                        self._live_since = time.monotonic()
                        self.subscriptions += 1
                        subscribed.set()
                        backoff = RECONNECT_MIN_S
                        log.info("event hub subscribed (%d)", self.subscriptions)
                        self.resync_all()
            except asyncio.CancelledError:
                await _close(pubsub, client)
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: reconnect; streams reconcile meanwhile
                subscribed.clear()
                self._live_since = None
                log.warning("event hub lost its subscription (%s); reconnecting in %.1fs", exc, backoff)
                self.resync_all()
            # not in `finally`: a loop torn down under us (GeneratorExit) must not await anything
            await _close(pubsub, client)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)


async def _close(pubsub: PubSub, client: Redis) -> None:
    """Close the subscription and its client, each within a bound (a dead connection can block a close)."""
    for closing in (pubsub.aclose, client.aclose):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing(), CLOSE_TIMEOUT_S)
