"""Ephemeral data on Redis and on the embedded database fallback: rate-limit windows."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from storage.ephemeral import DatabaseEphemeral, Ephemeral, RedisEphemeral, make_ephemeral


@pytest.fixture(params=["redis", "database"])
def eph(request: pytest.FixtureRequest) -> Ephemeral:
    if request.param == "redis":
        return RedisEphemeral(request.getfixturevalue("redis_url"), prefix=f"t{secrets.token_hex(3)}:")
    return DatabaseEphemeral(request.getfixturevalue("sqlite_sessions"))


def test_rate_limit(eph: Ephemeral) -> None:
    key = secrets.token_hex(4)
    results = [eph.hit(key, limit=3, window_s=3600) for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert all(r is not None and 0 < r <= 3600 for r in results[3:])
    assert eph.hit(key + "-other", limit=3, window_s=3600) is None
    eph.ping()


def test_factory(settings: Any, sqlite_sessions: Any) -> None:
    assert isinstance(make_ephemeral(settings), RedisEphemeral)
    embedded = settings.model_copy(update={"redis_url": ""})
    assert isinstance(make_ephemeral(embedded, sqlite_sessions), DatabaseEphemeral)
    with pytest.raises(ValueError):
        make_ephemeral(embedded)


def test_database_purge_expired(sqlite_sessions: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from storage.tables import KeyValue, utcnow

    eph = DatabaseEphemeral(sqlite_sessions)
    key = f"purge-{secrets.token_hex(4)}"
    assert eph.hit(key, limit=5, window_s=3600) is None
    with sqlite_sessions.begin() as s:
        [row] = s.scalars(select(KeyValue).where(KeyValue.key.startswith(f"rl:{key}:"))).all()
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert eph.purge_expired() >= 1
    with sqlite_sessions() as s:
        assert not s.scalars(select(KeyValue).where(KeyValue.key.startswith(f"rl:{key}:"))).all()
