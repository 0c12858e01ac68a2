"""What a worker hears on Redis (`storage.jobs.events`): queue wake-ups (`{prefix}ev:queue:{queue}`: jobs became
claimable in a queue, so a full running set asks for a newcomer only when one may be there) and cancel hints
(`{prefix}ev:cancel`: running jobs asked to stop, so a running set reads cancel requests when one was asked for
instead of every step: `workers.runner.progress.BackgroundCancelWatcher`).

A busy worker polling the store for newcomers would cost the database a claim query per worker every fraction of
a second, for nothing most of the time; with these it costs one query per job that arrives. One subscription per
worker process, in a daemon thread that resubscribes after a Redis restart; while it is not subscribed, `take`
says it does not know (None) and the caller falls back to polling. Messages can be lost (they are pub/sub), so
callers still look now and then without one, and read Postgres (the truth) when one comes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Self

from storage.jobs.events import TRUST_HINTS_AFTER_S, cancel_channel, channel_prefix, queue_channel

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
OWNERS_KEPT = 256  # per queue, the keys of wake-ups not taken yet; beyond, a take hears "not said"
Owners = dict[str, int]  # a wake-up's keys (owner ids), each with the highest priority of its jobs there
HEARD_CANCELS_KEPT = 10_000  # job ids of recent cancel hints, for a job claimed just before its hint came


class HintBook:
    """What a source of cancel hints keeps for the watchers (`workers.runner.progress.BackgroundCancelWatcher`):
    the ids of recent hints (`heard`: a job claimed just before its hint came still has it when it is watched)
    and the listeners, told the ids of each hint, or None for a resync (hints may have been lost: read now).
    Shared by the direct worker's Redis subscription (`CancelHints`) and a gateway worker's cancel long-polls
    (`workers.transport.gateway_cancels`)."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Callable[[list[str] | None], None]] = []
        self._book_lock = threading.Lock()

    def listen(self, listener: Callable[[list[str] | None], None]) -> None:
        """Call `listener(job_ids)` on the source's thread for every hint from now on (it must be quick and
        must not call back into the book: it runs under the book's lock)."""
        with self._book_lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Callable[[list[str] | None], None]) -> None:
        with self._book_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def heard(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` a recent hint named."""
        with self._book_lock:
            return {j for j in job_ids if j in self._recent}

    @property
    def listened(self) -> bool:
        """Whether a watcher listens now."""
        with self._book_lock:
            return bool(self._listeners)

    def recent(self, limit: int) -> list[str]:
        """The ids of the latest hints, newest last (at most `limit`)."""
        with self._book_lock:
            return list(self._recent)[-limit:] if limit > 0 else []

    def _tell(self, ids: list[str] | None) -> None:
        """A hint (None: a resync): kept and told to the listeners under one lock, so a job watched meanwhile
        finds it in `heard` or its watcher hears it, and `heard` says the listeners were told."""
        with self._book_lock:
            for job_id in ids or ():
                self._recent[job_id] = None
                self._recent.move_to_end(job_id)
            while len(self._recent) > HEARD_CANCELS_KEPT:
                self._recent.popitem(last=False)
            for listener in self._listeners:
                listener(ids)


class _Subscription:
    """One Redis pub/sub subscription in a daemon thread that resubscribes after a Redis restart. `live_since` is
    when the current subscription began (monotonic; None while not subscribed): what was published before it, or
    while none was live, was not heard."""

    thread_name = "redis-hints"

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, health_check_interval=30)
        self.prefix = channel_prefix(redis_url)
        self.listening = threading.Event()
        self.live_since: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._listen, name=self.thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _subscribe(self, pubsub: Any) -> None:
        raise NotImplementedError

    def _note(self, channel: str, data: Any) -> None:
        raise NotImplementedError

    def _listen(self) -> None:
        import redis

        while not self._stop.is_set():
            pubsub = self.client.pubsub()
            try:
                self._subscribe(pubsub)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] in ("subscribe", "psubscribe"):  # confirmed: what is published now is heard
                        self.live_since = time.monotonic()
                        self.listening.set()
                    elif message["type"] in ("message", "pmessage"):
                        channel = message["channel"]
                        self._note(channel.decode() if isinstance(channel, bytes) else channel, message["data"])
            except (redis.RedisError, OSError) as exc:
                if self.listening.is_set():
                    log.warning("%s lost (%s); polling until Redis is back", self.thread_name, exc)
                self.listening.clear()
                self.live_since = None
                self._stop.wait(RETRY_SECONDS)
            finally:
                pubsub.close()
        self.listening.clear()
        self.live_since = None


class QueueWakeups(_Subscription):
    """Which queues were woken since a loop last asked (`take`)."""

    thread_name = "queue-wakeups"

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url)
        self.prefix = queue_channel(self.prefix, "")  # + the queue's name
        self.pattern = self.prefix + "*"  # not the job channels: their progress events are many
        self._heard: dict[str, int] = {}
        self._taken: dict[str, int] = {}
        self._owners: dict[str, list[tuple[int, Owners | None]]] = {}  # per wake-up not taken: (count, its keys)
        self._listeners: dict[str, Callable[[int, Owners | None], None]] = {}

    def listen(self, queue: str, listener: Callable[[int, Owners | None], None] | None) -> None:
        """Call `listener(count, owners)` on the subscription's thread at each wake-up of `queue` (None: no
        longer), with the queue's count of wake-ups heard so far and the keys whose jobs it announced, each with
        their highest priority (None: not said). It runs under the lock `take` takes, so a `take` that reports the
        wake-up comes after the listener acted on it; it must be quick and must not call back in here."""
        with self._lock:
            if listener is None:
                self._listeners.pop(queue, None)
            else:
                self._listeners[queue] = listener

    def take(self, queue: str) -> bool | None:
        """True if `queue` was woken since the last `take` of it, False if not, None while not subscribed."""
        return self.take_owners(queue)[0]

    def take_owners(self, queue: str) -> tuple[bool | None, Owners | None]:
        """`take`, and the keys the wake-ups it reports announced jobs of, each with their highest priority (None
        when one of them did not say): a full running set holding all of them at that priority has no newcomer
        to claim."""
        with self._lock:
            heard, taken = self._heard.get(queue, 0), self._taken.get(queue, 0)
            new = heard != taken
            self._taken[queue] = heard
            owners: Owners | None = {}
            for count, said in self._owners.pop(queue, ()):
                if count <= taken:
                    continue
                if said is None or owners is None:
                    owners = None
                    continue
                for owner, priority in said.items():
                    owners[owner] = max(owners.get(owner, priority), priority)
        return (new if self.listening.is_set() else None), owners

    def counts(self) -> dict[str, int]:
        """Wake-ups heard so far, per queue: read before a claim, then `seen_by_claim` after it."""
        with self._lock:
            return dict(self._heard)

    def seen_by_claim(self, queue: str, counts: dict[str, int]) -> None:
        """The wake-ups of `queue` in `counts` (read before a claim of that queue) announced jobs that claim saw:
        `take` no longer reports them. Else a loop's first pass would claim again, on its sampling thread, for
        the very job its message's claim took (a lone job waited 9-12 ms for that query before its first step)."""
        with self._lock:
            self._taken[queue] = taken = max(self._taken.get(queue, 0), counts.get(queue, 0))
            if queue in self._owners:
                self._owners[queue] = [(count, said) for count, said in self._owners[queue] if count > taken]

    def heard(self, queue: str) -> int:
        """Wake-ups of `queue` heard so far (for tests and benchmarks that wait on one)."""
        with self._lock:
            return self._heard.get(queue, 0)

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.psubscribe(self.pattern)

    def _note(self, channel: str, data: Any) -> None:
        if channel.startswith(self.prefix):
            queue = channel[len(self.prefix):]
            owners = _owners_said(data)
            with self._lock:
                count = self._heard[queue] = self._heard.get(queue, 0) + 1
                unseen = self._owners.setdefault(queue, [])
                if len(unseen) >= OWNERS_KEPT:  # not taken for long (no loop of this queue): not said, from here
                    unseen[:] = [(unseen[-1][0], None)]
                unseen.append((count, owners))
                listener = self._listeners.get(queue)
                if listener is not None:
                    try:
                        listener(count, owners)
                    except Exception:  # the subscription goes on; callers still take() the wake-up
                        log.exception("a queue wake-up listener failed")


def _owners_said(data: Any) -> Owners | None:
    """The keys a queue wake-up names with their highest priority (`storage.jobs.events.queued_events`); None
    when it names none (too many keys, an older publisher) or is unreadable."""
    try:
        said = json.loads(data).get("owners")
        if isinstance(said, dict) and all(isinstance(p, int) and not isinstance(p, bool) for p in said.values()):
            return {str(owner): int(priority) for owner, priority in said.items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("unreadable queue wake-up")
    return None


class CancelHints(_Subscription, HintBook):
    """Cancel requests of running jobs as they are made, heard on Redis (any job's: a watcher keeps those it
    watches)."""

    thread_name = "cancel-hints"

    def __init__(self, redis_url: str) -> None:
        _Subscription.__init__(self, redis_url)
        HintBook.__init__(self)
        self.channel = cancel_channel(self.prefix)

    rereads = False  # a hint lost by a publisher is never told: watchers read now and then anyway

    @property
    def trusted_since(self) -> float | None:
        """From when hints tell of every cancel (monotonic; None while not subscribed): TRUST_HINTS_AFTER_S after
        the subscription began, so the quiet spell of a publisher that failed in the same Redis restart is over."""
        live = self.live_since
        return None if live is None else live + TRUST_HINTS_AFTER_S

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.subscribe(self.channel)

    def _note(self, channel: str, data: Any) -> None:
        try:
            message = json.loads(data)
            ids = None if message.get("type") == "resync" else [str(j) for j in message["job_ids"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable cancel hint on %s", channel)
            return
        if ids is None:
            log.info("cancel hints may have been lost (a publisher failed): watchers read now")
        self._tell(ids)
