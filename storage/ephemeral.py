"""Short-lived shared data: job progress, per-key rate limits, and event fan-out for server-sent events.

Nothing here is the truth about a job (Postgres is): losing it loses only freshness. Two backends meet one
contract: `RedisEphemeral` (production, and whenever `settings.redis_url` is set) and `DatabaseEphemeral`
(embedded mode: the `ephemeral` table, so the API and worker processes sharing one SQLite file see the same
values). Rate limits are fixed windows: `hit(key, limit, window_s)` returns the seconds to wait, or None.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import write_session
from storage.ids import new_id
from storage.settings import Settings
from storage.tables import KeyValue, utcnow

log = logging.getLogger(__name__)

PROGRESS_TTL_S = 3600
EVENT_TTL_S = 120


class Subscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


class Ephemeral(Protocol):
    def publish_progress(self, job_id: str, step: int, total: int) -> None: ...
    def read_progress(self, job_id: str) -> tuple[int, int] | None: ...
    def hit(self, key: str, limit: int, window_s: float) -> float | None: ...
    def publish(self, channel: str, event: dict[str, Any]) -> None: ...
    def subscribe(self, channel: str) -> Subscription: ...
    def ping(self) -> None: ...


def job_channel(job_id: str) -> str:
    """The fan-out channel carrying one job's status and progress events."""
    return f"job:{job_id}"


def _window(window_s: float, now: float) -> tuple[int, float]:
    index = int(now // window_s)
    return index, (index + 1) * window_s - now


# ---- Redis ------------------------------------------------------------------------------------------------
class RedisEphemeral:
    """Progress in hashes, rate limits in INCR/EXPIRE counters, fan-out with PUBLISH/SUBSCRIBE."""

    def __init__(self, url: str, prefix: str = "unipic:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix

    def publish_progress(self, job_id: str, step: int, total: int) -> None:
        key = f"{self.prefix}progress:{job_id}"
        pipe = self.client.pipeline()
        pipe.hset(key, mapping={"step": step, "total": total})
        pipe.expire(key, PROGRESS_TTL_S)
        pipe.execute()

    def read_progress(self, job_id: str) -> tuple[int, int] | None:
        value = self.client.hgetall(f"{self.prefix}progress:{job_id}")
        if not value:
            return None
        return int(value[b"step"]), int(value[b"total"])

    def hit(self, key: str, limit: int, window_s: float) -> float | None:
        index, remaining = _window(window_s, time.time())
        counter = f"{self.prefix}rl:{key}:{index}"
        pipe = self.client.pipeline()
        pipe.incr(counter)
        pipe.expire(counter, math.ceil(window_s) + 1)
        count = int(pipe.execute()[0])
        return None if count <= limit else max(remaining, 0.001)

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        self.client.publish(self.prefix + channel, json.dumps(event))

    def subscribe(self, channel: str) -> Subscription:
        pubsub = self.client.pubsub()
        pubsub.subscribe(self.prefix + channel)
        # wait for the confirmation, so events published after subscribe() returns are never missed
        confirmation = pubsub.get_message(timeout=5)
        if confirmation is None or confirmation["type"] != "subscribe":
            pubsub.close()
            raise ConnectionError(f"redis did not confirm the subscription to {channel}")
        return _RedisSubscription(pubsub)

    def ping(self) -> None:
        self.client.ping()


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    def get(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            message = self.pubsub.get_message(timeout=max(deadline - time.monotonic(), 0))
            if message is not None and message["type"] == "message":
                return dict(json.loads(message["data"]))
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.pubsub.close()


# ---- database (embedded) ----------------------------------------------------------------------------------
class DatabaseEphemeral:
    """The same contract on the `ephemeral` table; subscribers poll for new event rows."""

    def __init__(self, session_factory: sessionmaker[Session], poll_interval_s: float = 0.2) -> None:
        self.sessions = session_factory
        self.poll_interval_s = poll_interval_s

    def _put(self, s: Session, key: str, value: dict[str, Any], ttl_s: float) -> None:
        row = s.get(KeyValue, key)
        expires = utcnow() + timedelta(seconds=ttl_s)
        if row is None:
            s.add(KeyValue(key=key, value=value, expires_at=expires))
        else:
            row.value, row.expires_at = value, expires

    def publish_progress(self, job_id: str, step: int, total: int) -> None:
        with write_session(self.sessions) as s:
            self._put(s, f"progress:{job_id}", {"step": step, "total": total}, PROGRESS_TTL_S)

    def read_progress(self, job_id: str) -> tuple[int, int] | None:
        with self.sessions() as s:
            row = s.get(KeyValue, f"progress:{job_id}")
            if row is None or (row.expires_at and row.expires_at < utcnow()):
                return None
            return int(row.value["step"]), int(row.value["total"])

    def hit(self, key: str, limit: int, window_s: float) -> float | None:
        index, remaining = _window(window_s, time.time())
        counter = f"rl:{key}:{index}"
        with write_session(self.sessions) as s:
            row = s.get(KeyValue, counter)
            count = (int(row.value["n"]) if row else 0) + 1
            self._put(s, counter, {"n": count}, window_s + 1)
        return None if count <= limit else max(remaining, 0.001)

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        with write_session(self.sessions) as s:
            self._put(s, f"ev:{channel}:{new_id()}", event, EVENT_TTL_S)

    def subscribe(self, channel: str) -> Subscription:
        return _DatabaseSubscription(self, channel)

    def purge_expired(self) -> int:
        """Drop expired rows (the sweeper calls this)."""
        with write_session(self.sessions) as s:
            result = s.execute(delete(KeyValue).where(KeyValue.expires_at < utcnow()))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def ping(self) -> None:
        with self.sessions() as s:
            s.execute(select(1))


class _DatabaseSubscription:
    def __init__(self, store: DatabaseEphemeral, channel: str) -> None:
        self.store = store
        self.prefix = f"ev:{channel}:"
        self.last = self.prefix + new_id()  # only events published after subscribing
        self.buffer: list[dict[str, Any]] = []

    def get(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while not self.buffer:
            self._poll()
            if self.buffer or time.monotonic() >= deadline:
                break
            time.sleep(min(self.store.poll_interval_s, max(deadline - time.monotonic(), 0)))
        return self.buffer.pop(0) if self.buffer else None

    def _poll(self) -> None:
        stmt = (select(KeyValue).where(KeyValue.key > self.last, KeyValue.key.startswith(self.prefix, autoescape=True))
                .order_by(KeyValue.key))
        with self.store.sessions() as s:
            for row in s.scalars(stmt):
                self.buffer.append(row.value)
                self.last = row.key

    def close(self) -> None:
        self.buffer.clear()


def make_ephemeral(settings: Settings, session_factory: sessionmaker[Session] | None = None) -> Ephemeral:
    """Redis when `settings.redis_url` is set; otherwise the database fallback (needs `session_factory`)."""
    if settings.redis_url:
        return RedisEphemeral(settings.redis_url)
    if session_factory is None:
        raise ValueError("embedded ephemeral store needs a session factory (no UNIPIC_REDIS_URL set)")
    return DatabaseEphemeral(session_factory)
