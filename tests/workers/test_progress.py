"""Progress writes are throttled per job; cancel requests reach the running batch."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis

from tests.support.claims import claim_job
from tests.support.jobs import make_job
from tests.support.waiting import wait_for
from workers.runner.progress import BackgroundCancelWatcher, ProgressReporter


def _claimed(job_store: Any, object_store: Any, owner_id: str, tag: str) -> Any:
    job = make_job(job_store, object_store, owner_id, "generate", 64, seed=1, tag=tag)
    (claim,) = claim_job(job_store, job.id, "progress-test", 30.0)
    return claim


def test_progress_is_written_at_most_once_per_interval(job_store: Any, object_store: Any, owner_id: str) -> None:
    claim = _claimed(job_store, object_store, owner_id, "progress")
    with ProgressReporter(job_store, {claim.job_id: claim}, interval_seconds=3600) as reporter:
        reporter([claim.job_id], 1, 6)
        wait_for(lambda: job_store.get(claim.job_id).progress_step == 1, "the first progress write")
        reporter([claim.job_id], 2, 6)  # within the interval: not written
        assert reporter.fraction == 2 / 6
    assert (job_store.get(claim.job_id).progress_step, job_store.get(claim.job_id).progress_total) == (1, 6)

    with ProgressReporter(job_store, {claim.job_id: claim}, interval_seconds=0) as unthrottled:
        unthrottled([claim.job_id], 5, 6)
        wait_for(lambda: job_store.get(claim.job_id).progress_step == 5, "an unthrottled write")


def test_cancel_requests_reach_the_watcher(job_store: Any, object_store: Any, owner_id: str) -> None:
    claim = _claimed(job_store, object_store, owner_id, "cancel-watch")
    with BackgroundCancelWatcher(job_store, 0.05, local=lambda: {"local-drop"}) as watcher:
        watcher.watch([claim.job_id])
        assert watcher() == {"local-drop"}
        job_store.request_cancel(claim.job_id, owner_id)
        wait_for(lambda: claim.job_id in watcher(), "the cancel request to be seen by the background reads")
        assert watcher.requested == {claim.job_id}


def test_a_background_watcher_reads_cancels_off_the_loop_and_forgets_jobs_that_left(
    job_store: Any, object_store: Any, owner_id: str
) -> None:

    kept, canceled = (_claimed(job_store, object_store, owner_id, f"bg-cancel-{i}") for i in range(2))
    watched: list[list[str]] = []
    asked = job_store.cancel_requested_ids

    def observed(job_ids: Any) -> set[str]:  # observe: which ids each background check asks about
        watched.append(sorted(job_ids))
        return set(asked(job_ids))

    store = type("Observed", (), {"cancel_requested_ids": staticmethod(observed)})()
    with BackgroundCancelWatcher(store, 0.01) as watcher:  # type: ignore[arg-type]
        watcher.watch([kept.job_id, canceled.job_id])
        # When one job's owner asks to cancel it, the loop's read (no query of its own) sees it
        job_store.request_cancel(canceled.job_id, None)
        wait_for(lambda: watcher() == {canceled.job_id}, "the background check to see the cancel")
        # And once both left the set, they are neither reported nor asked about again
        watcher.unwatch([kept.job_id, canceled.job_id])
        assert watcher() == set()
    seen = len(watched)  # the background thread has stopped
    watcher.check()
    assert len(watched) == seen  # nothing left to ask about: no query at all


class _ReadLog:
    """The store's cancel reads, with the thread each ran on (what a running set's sampling thread pays)."""

    def __init__(self, job_store: Any) -> None:
        self.store, self.threads = job_store, list[str]()

    def cancel_requested_ids(self, job_ids: Any) -> set[str]:
        self.threads.append(threading.current_thread().name)
        return set(self.store.cancel_requested_ids(job_ids))


def test_a_watcher_with_cancel_hints_reads_when_a_cancel_is_heard_not_every_step(
    job_store: Any, publishing_store: Any, object_store: Any, owner_id: str, settings: Any, monkeypatch: Any
) -> None:
    from workers.runner import progress, wakeups
    from workers.runner.wakeups import CancelHints

    monkeypatch.setattr(progress, "HINTED_CHECK_SECONDS", 3600.0)  # any read after the first is a hint's
    monkeypatch.setattr(wakeups, "TRUST_HINTS_AFTER_S", 0.0)  # trusted once subscribed (tested below)
    hints = CancelHints(settings.redis_url).start()
    reads = _ReadLog(job_store)
    try:
        wait_for(hints.listening.is_set, "the cancel hints to be subscribed")
        claimed_after = time.monotonic()  # the claims clear cancel requests: hints cover everything after them
        kept, canceled, early = (_claimed(job_store, object_store, owner_id, f"hinted-{i}") for i in range(3))
        with progress.BackgroundCancelWatcher(reads, 0.01, hints) as watcher:  # type: ignore[arg-type]
            watcher.watch([kept.job_id, canceled.job_id], claimed_after)
            # Given a set stepping with nothing canceled: between its steps the loop asks, and no read is made
            for _ in range(20):
                assert watcher(time.monotonic()) == set()
            assert reads.threads == []

            # When an owner cancels one job through a store that publishes (the API's), it is seen off the loop
            publishing_store.request_cancel(canceled.job_id, owner_id)
            wait_for(lambda: watcher() == {canceled.job_id}, "the hinted read to see the cancel")
            assert set(reads.threads) == {"cancel-watcher"}

            # And a job canceled before the loop watched it (claimed just before) is read when it is watched
            publishing_store.request_cancel(early.job_id, owner_id)
            wait_for(lambda: hints.heard([early.job_id]), "the early cancel's hint")
            watcher.watch([early.job_id], claimed_after)
            wait_for(lambda: early.job_id in watcher(), "the early cancel to be seen")
            assert "MainThread" not in reads.threads

            # And a resync (a publisher that failed says hints may have been lost) makes it read at once
            before = len(reads.threads)
            redis.Redis.from_url(settings.redis_url).publish(hints.channel, json.dumps({"type": "resync"}))
            wait_for(lambda: len(reads.threads) > before, "the read a resync asks for")
    finally:
        hints.close()


class _SlowBackgroundReads(_ReadLog):
    """The watcher thread's reads wait for `release` (a busy database); the loop's own reads do not."""

    def __init__(self, job_store: Any) -> None:
        super().__init__(job_store)
        self.release, self.waiting = threading.Event(), threading.Event()

    def cancel_requested_ids(self, job_ids: Any) -> set[str]:
        if threading.current_thread().name == "cancel-watcher":
            self.waiting.set()
            self.release.wait(30)
        return super().cancel_requested_ids(job_ids)


def test_a_cancel_heard_during_a_step_is_seen_after_it_while_the_hinted_read_is_still_on_its_way(
    job_store: Any, publishing_store: Any, object_store: Any, owner_id: str, settings: Any, monkeypatch: Any
) -> None:
    from workers.runner import progress, wakeups
    from workers.runner.wakeups import CancelHints

    monkeypatch.setattr(progress, "HINTED_CHECK_SECONDS", 3600.0)
    monkeypatch.setattr(wakeups, "TRUST_HINTS_AFTER_S", 0.0)
    hints = CancelHints(settings.redis_url).start()
    reads = _SlowBackgroundReads(job_store)
    try:
        wait_for(hints.listening.is_set, "the cancel hints to be subscribed")
        claimed_after = time.monotonic()
        held, quick = (_claimed(job_store, object_store, owner_id, f"hinted-slow-{i}") for i in range(2))
        with progress.BackgroundCancelWatcher(reads, 0.01, hints) as watcher:  # type: ignore[arg-type]
            watcher.watch([held.job_id, quick.job_id], claimed_after)
            # Given a step under way, and a cancel heard during it whose background read is held up (a busy
            # database: longer than the loop waits for a read on its way)
            monkeypatch.setattr(progress, "IN_FLIGHT_WAIT_SECONDS", 0.05)
            step_started = time.monotonic()
            publishing_store.request_cancel(held.job_id, owner_id)
            wait_for(lambda: hints.heard([held.job_id]), "the cancel's hint")
            wait_for(reads.waiting.is_set, "the hinted read to begin")
            # When the loop asks between that step and the next
            # Then the cancel is seen now (read on the loop's thread), not a step later
            assert watcher(step_started) == {held.job_id}
            assert reads.threads == ["MainThread"]
            reads.release.set()
            wait_for(lambda: reads.threads.count("cancel-watcher") == 1, "the held read to end")

            # Given another cancel heard during the next step, whose background read answers at its pace
            monkeypatch.setattr(progress, "IN_FLIGHT_WAIT_SECONDS", 30.0)
            step_started = time.monotonic()
            publishing_store.request_cancel(quick.job_id, owner_id)
            wait_for(lambda: reads.threads.count("cancel-watcher") == 2, "the second hinted read to begin")
            # When the loop asks, Then it waits for that read (or finds it answered) instead of reading again
            assert watcher(step_started) == {held.job_id, quick.job_id}
            assert reads.threads.count("MainThread") == 1, reads.threads
    finally:
        reads.release.set()
        hints.close()


def test_a_watcher_whose_hints_are_lost_or_down_still_sees_every_cancel(
    job_store: Any, object_store: Any, owner_id: str, settings: Any, monkeypatch: Any
) -> None:
    from workers.runner import progress, wakeups
    from workers.runner.wakeups import CancelHints

    monkeypatch.setattr(progress, "HINTED_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(wakeups, "TRUST_HINTS_AFTER_S", 0.0)
    lost, down, settle = (_claimed(job_store, object_store, owner_id, f"unhinted-{i}") for i in range(3))
    hints = CancelHints(settings.redis_url).start()
    try:
        wait_for(hints.listening.is_set, "the cancel hints to be subscribed")
        with progress.BackgroundCancelWatcher(job_store, 0.01, hints) as watcher:
            watcher.watch([lost.job_id])
            # Given a cancel whose hint never went out (a store that publishes nothing, as when Redis failed it)
            job_store.request_cancel(lost.job_id, owner_id)
            # Then the watcher's reads every HINTED_CHECK_SECONDS still see it
            wait_for(lambda: watcher() == {lost.job_id}, "the safety read to see the cancel")
    finally:
        hints.close()

    # Given hints that are not subscribed (Redis down): a pass after a step reads on the loop's thread, as without
    reads = _ReadLog(job_store)
    unsubscribed = CancelHints(settings.redis_url)  # never started
    with progress.BackgroundCancelWatcher(reads, 3600.0, unsubscribed) as watcher:  # type: ignore[arg-type]
        watcher.watch([down.job_id])
        job_store.request_cancel(down.job_id, owner_id)
        assert watcher(time.monotonic()) == {down.job_id}
        assert "MainThread" in reads.threads

    # And hints just subscribed again (after a Redis restart the API's publisher may still be quiet) are not
    # trusted yet: a pass reads on the loop's thread too
    monkeypatch.setattr(wakeups, "TRUST_HINTS_AFTER_S", 3600.0)
    settling = CancelHints(settings.redis_url).start()
    reads = _ReadLog(job_store)
    try:
        wait_for(settling.listening.is_set, "the cancel hints to be subscribed")
        with progress.BackgroundCancelWatcher(reads, 3600.0, settling) as watcher:  # type: ignore[arg-type]
            watcher.watch([settle.job_id], time.monotonic())
            wait_for(lambda: "cancel-watcher" in reads.threads, "the watcher's first read")
            before = reads.threads.count("MainThread")
            watcher(time.monotonic())
            assert reads.threads.count("MainThread") == before + 1
    finally:
        settling.close()
