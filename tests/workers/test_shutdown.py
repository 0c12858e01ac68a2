"""The graceful-shutdown decision: finish when the batch fits in the grace period, release otherwise."""

from __future__ import annotations

import time

from workers.shutdown import ShutdownGate


def test_nothing_is_abandoned_without_a_shutdown() -> None:
    assert not ShutdownGate(0).should_abandon(time.monotonic() - 1000, 0.01)


def test_a_batch_that_will_finish_in_time_is_kept() -> None:
    gate = ShutdownGate(grace_seconds=30)
    gate.request()
    # ran 1 s, 90% done: about 0.1 s left, well within the grace period
    assert not gate.should_abandon(time.monotonic() - 1.0, 0.9)


def test_a_batch_that_cannot_finish_in_time_is_abandoned() -> None:
    gate = ShutdownGate(grace_seconds=30)
    gate.request()
    # ran 100 s, 10% done: about 900 s left
    assert gate.should_abandon(time.monotonic() - 100.0, 0.1)
    assert not gate.should_abandon(time.monotonic() - 100.0, 0.0)  # no evidence yet: wait


def test_the_grace_period_running_out_abandons_everything() -> None:
    gate = ShutdownGate(grace_seconds=0)
    gate.request()
    assert gate.should_abandon(time.monotonic(), 0.99)
