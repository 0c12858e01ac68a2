"""Progress writes are throttled per job; cancel requests reach the running batch."""

from __future__ import annotations

from typing import Any

from tests.support.claims import claim_job
from tests.support.jobs import make_job
from tests.support.waiting import wait_for
from workers.runner.progress import CancelWatcher, ProgressReporter


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
    watcher = CancelWatcher(job_store, [claim.job_id], interval_seconds=0.05, local=lambda: {"local-drop"})
    assert watcher() == {"local-drop"}
    job_store.request_cancel(claim.job_id, owner_id)
    wait_for(lambda: claim.job_id in watcher(), "the cancel request to be seen")
    assert watcher.requested == {claim.job_id}


def test_a_background_watcher_reads_cancels_off_the_loop_and_forgets_jobs_that_left(
    job_store: Any, object_store: Any, owner_id: str
) -> None:
    from workers.runner.progress import BackgroundCancelWatcher

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
