"""Short-lived shared data: per-key rate-limit windows.

Nothing here is the truth about a job (Postgres is, progress included: workers write it to the job row through
`JobStore.set_progress` and the API reads it from there). Two backends meet one contract: `RedisEphemeral`
(production, and whenever `settings.redis_url` is set) and `DatabaseEphemeral` (embedded mode: the `ephemeral`
table, so the API processes sharing one SQLite file see the same counters). Rate limits are fixed windows:
`hit(key, limit, window_s)` returns the seconds to wait, or None. It knows nothing of HTTP or of API keys.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import write_session
from storage.settings import Settings
from storage.tables import KeyValue, utcnow

log = logging.getLogger(__name__)


class Ephemeral(Protocol):
    """What the API needs from the short-lived store."""

    def hit(self, key: str, limit: int, window_s: float) -> float | None: ...
    def ping(self) -> None: ...


def _window(window_s: float, now: float) -> tuple[int, float]:
    index = int(now // window_s)
    return index, (index + 1) * window_s - now


# ---- Redis ------------------------------------------------------------------------------------------------
class RedisEphemeral:
    """Rate limits in INCR/EXPIRE counters."""

    def __init__(self, url: str, prefix: str = "unipic:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix

    def hit(self, key: str, limit: int, window_s: float) -> float | None:
        index, remaining = _window(window_s, time.time())
        counter = f"{self.prefix}rl:{key}:{index}"
        pipe = self.client.pipeline()
        pipe.incr(counter)
        pipe.expire(counter, math.ceil(window_s) + 1)
        count = int(pipe.execute()[0])
        return None if count <= limit else max(remaining, 0.001)

    def ping(self) -> None:
        self.client.ping()


# ---- database (embedded) ----------------------------------------------------------------------------------
class DatabaseEphemeral:
    """The same contract on the `ephemeral` table."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def _put(self, s: Session, key: str, value: dict[str, Any], ttl_s: float) -> None:
        row = s.get(KeyValue, key)
        expires = utcnow() + timedelta(seconds=ttl_s)
        if row is None:
            s.add(KeyValue(key=key, value=value, expires_at=expires))
        else:
            row.value, row.expires_at = value, expires

    def hit(self, key: str, limit: int, window_s: float) -> float | None:
        index, remaining = _window(window_s, time.time())
        counter = f"rl:{key}:{index}"
        with write_session(self.sessions) as s:
            row = s.get(KeyValue, counter)
            count = (int(row.value["n"]) if row else 0) + 1
            self._put(s, counter, {"n": count}, window_s + 1)
        return None if count <= limit else max(remaining, 0.001)

    def purge_expired(self) -> int:
        """Drop expired rows."""
        with write_session(self.sessions) as s:
            result = s.execute(delete(KeyValue).where(KeyValue.expires_at < utcnow()))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def ping(self) -> None:
        with self.sessions() as s:
            s.execute(select(1))


def make_ephemeral(settings: Settings, session_factory: sessionmaker[Session] | None = None) -> Ephemeral:
    """Redis when `settings.redis_url` is set; otherwise the database fallback (needs `session_factory`)."""
    if settings.redis_url:
        return RedisEphemeral(settings.redis_url)
    if session_factory is None:
        raise ValueError("embedded ephemeral store needs a session factory (no UNIPIC_REDIS_URL set)")
    return DatabaseEphemeral(session_factory)
