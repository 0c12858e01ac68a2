"""Queue wake-ups heard by a worker: the Redis messages (`storage.jobs.events`, `{prefix}ev:queue:{queue}`) that
say jobs became claimable in a queue, so a full running set asks for a newcomer only when one may be there.

A busy worker polling the store for newcomers would cost the database a claim query per worker every fraction of
a second, for nothing most of the time; with these it costs one query per job that arrives. One subscription per
worker process, in a daemon thread that resubscribes after a Redis restart; while it is not subscribed, `take`
says it does not know (None) and the caller falls back to polling. Messages can be lost (they are pub/sub), so
callers still look now and then without one.
"""

from __future__ import annotations

import logging
import threading

from storage.jobs.events import channel_prefix, queue_channel

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class QueueWakeups:
    """Which queues were woken since a loop last asked (`take`)."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, health_check_interval=30)
        self.prefix = queue_channel(channel_prefix(redis_url), "")  # + the queue's name
        self.pattern = self.prefix + "*"  # not the job channels: their progress events are many
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._heard: dict[str, int] = {}
        self._taken: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._listen, name="queue-wakeups", daemon=True)

    def start(self) -> QueueWakeups:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def take(self, queue: str) -> bool | None:
        """True if `queue` was woken since the last `take` of it, False if not, None while not subscribed."""
        with self._lock:
            heard = self._heard.get(queue, 0)
            new = heard != self._taken.get(queue, 0)
            self._taken[queue] = heard
        return new if self.listening.is_set() else None

    def counts(self) -> dict[str, int]:
        """Wake-ups heard so far, per queue: read before a claim, then `seen_by_claim` after it."""
        with self._lock:
            return dict(self._heard)

    def seen_by_claim(self, queue: str, counts: dict[str, int]) -> None:
        """The wake-ups of `queue` in `counts` (read before a claim of that queue) announced jobs that claim saw:
        `take` no longer reports them. Else a loop's first pass would claim again, on its sampling thread, for
        the very job its message's claim took (a lone job waited 9-12 ms for that query before its first step)."""
        with self._lock:
            self._taken[queue] = max(self._taken.get(queue, 0), counts.get(queue, 0))

    def heard(self, queue: str) -> int:
        """Wake-ups of `queue` heard so far (for tests and benchmarks that wait on one)."""
        with self._lock:
            return self._heard.get(queue, 0)

    def _listen(self) -> None:
        import redis

        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self.pattern)
                self.listening.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._note(message["channel"])
            except (redis.RedisError, OSError) as exc:
                if self.listening.is_set():
                    log.warning("queue wake-ups lost (%s); polling until Redis is back", exc)
                self.listening.clear()
                self._stop.wait(RETRY_SECONDS)
            finally:
                pubsub.close()
        self.listening.clear()

    def _note(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        if name.startswith(self.prefix):
            queue = name[len(self.prefix):]
            with self._lock:
                self._heard[queue] = self._heard.get(queue, 0) + 1
