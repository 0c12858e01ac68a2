"""Ephemeral data on Redis and on the embedded database fallback: progress, rate limits, fan-out."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest

from storage.ephemeral import DatabaseEphemeral, Ephemeral, RedisEphemeral, job_channel, make_ephemeral


@pytest.fixture(params=["redis", "database"])
def eph(request: pytest.FixtureRequest) -> Ephemeral:
    if request.param == "redis":
        return RedisEphemeral(request.getfixturevalue("redis_url"), prefix=f"t{secrets.token_hex(3)}:")
    return DatabaseEphemeral(request.getfixturevalue("sqlite_sessions"), poll_interval_s=0.02)


def test_progress(eph: Ephemeral) -> None:
    job_id = secrets.token_hex(4)
    assert eph.read_progress(job_id) is None
    eph.publish_progress(job_id, 3, 32)
    eph.publish_progress(job_id, 4, 32)
    assert eph.read_progress(job_id) == (4, 32)
    eph.ping()


def test_rate_limit(eph: Ephemeral) -> None:
    key = secrets.token_hex(4)
    results = [eph.hit(key, limit=3, window_s=3600) for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert all(r is not None and 0 < r <= 3600 for r in results[3:])
    assert eph.hit(key + "-other", limit=3, window_s=3600) is None


def test_fan_out(eph: Ephemeral) -> None:
    channel = job_channel(secrets.token_hex(4))
    sub = eph.subscribe(channel)
    try:
        received: list[Any] = []
        eph.publish(channel, {"type": "status", "status": "running"})
        eph.publish(job_channel("other"), {"type": "noise"})
        eph.publish(channel, {"type": "progress", "step": 1})
        while len(received) < 2:
            event = sub.get(timeout=5)
            assert event is not None
            received.append(event)
        assert received == [{"type": "status", "status": "running"}, {"type": "progress", "step": 1}]
        assert sub.get(timeout=0.05) is None
    finally:
        sub.close()


def test_fan_out_across_threads(eph: Ephemeral) -> None:
    channel = job_channel(secrets.token_hex(4))
    sub = eph.subscribe(channel)
    publisher = threading.Thread(target=lambda: [eph.publish(channel, {"n": i}) for i in range(3)])
    publisher.start()
    publisher.join()
    got = [sub.get(timeout=5) for _ in range(3)]
    sub.close()
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_factory(settings: Any, sqlite_sessions: Any) -> None:
    assert isinstance(make_ephemeral(settings), RedisEphemeral)
    embedded = settings.model_copy(update={"redis_url": ""})
    assert isinstance(make_ephemeral(embedded, sqlite_sessions), DatabaseEphemeral)
    with pytest.raises(ValueError):
        make_ephemeral(embedded)


def test_database_purge_expired(sqlite_sessions: Any) -> None:
    from datetime import timedelta

    from storage.tables import KeyValue, utcnow

    eph = DatabaseEphemeral(sqlite_sessions)
    eph.publish_progress("purge-me", 1, 2)
    with sqlite_sessions.begin() as s:
        s.get(KeyValue, "progress:purge-me").expires_at = utcnow() - timedelta(seconds=1)
    assert eph.read_progress("purge-me") is None
    assert eph.purge_expired() >= 1
    with sqlite_sessions() as s:
        assert s.get(KeyValue, "progress:purge-me") is None
