"""A worker that fails message after message backs off, and says so in its heartbeat record."""

from __future__ import annotations

import os
import secrets
from typing import Any

from workers.device.streak import FailureStreak
from workers.heartbeat import Heartbeat, WorkerInfo


def test_the_back_off_starts_at_the_threshold_doubles_and_ends_on_a_success() -> None:
    paused: list[float] = []
    streak = FailureStreak(threshold=3, base_seconds=2.0, max_seconds=5.0, sleep=paused.append)  # observe only
    for _ in range(2):
        streak.record(0, 1, "ValueError: bad")
        assert streak.pause() == 0.0
    for expected in (2.0, 4.0, 5.0):  # third, fourth, fifth failure in a row: capped at max_seconds
        streak.record(0, 3, "RuntimeError: boom")
        assert streak.pause() == expected
    assert paused == [2.0, 4.0, 5.0]
    snapshot = streak.snapshot()
    assert snapshot["consecutive_failures"] == 5 and snapshot["backing_off"] is True
    assert snapshot["backoff_until"] and snapshot["last_error"] == "RuntimeError: boom"
    streak.record(0, 0, None)  # a no-op message changes nothing
    assert streak.failures == 5
    streak.record(1, 2, "ValueError: one item")  # any success ends the run
    assert streak.pause() == 0.0 and streak.snapshot()["backing_off"] is False


def test_the_heartbeat_record_carries_the_workers_health(session_factory: Any, registry: Any) -> None:
    # Given a worker in a failure streak
    streak = FailureStreak(threshold=1, sleep=lambda _s: None)
    streak.record(0, 1, "RuntimeError: boom")
    streak.pause()
    info = WorkerInfo(id=f"streak-test:{secrets.token_hex(4)}", hostname="test", pid=os.getpid(), device="cpu",
                      model_id="tiny", kinds=["generate"], max_pixels=64 * 64, max_batch=1, queues=[])
    heartbeat = Heartbeat(session_factory, info, interval_seconds=3600, health=streak.snapshot)
    heartbeat.start()
    try:
        # When it beats
        heartbeat.beat()
        # Then its record says it is backing off, and why
        record = next(w for w in registry.all() if w.id == info.id)
        assert record.health is not None
        assert record.health["backing_off"] is True and record.health["consecutive_failures"] == 1
        assert record.health["last_error"] == "RuntimeError: boom"
    finally:
        heartbeat.stop()
