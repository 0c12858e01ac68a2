"""storage.status.activity: the last hour in buckets, and failing webhook endpoints with their last error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from storage.jobs.ids import new_id
from storage.status.activity import ActivityQueries
from storage.tables import WebhookAttempt, WebhookEvent, utcnow
from tests.support.claims import claim_job, lease_keys
from tests.support.storage import job


def test_last_hour_counts_finished_jobs_and_their_latency(session_factory: Any, job_store: Any,
                                                          owner_id: str) -> None:
    queries = ActivityQueries(session_factory)
    before = queries.last_hour(utcnow() + timedelta(seconds=5))
    # Given two jobs that succeed and one that fails, now
    compat = f"generate:{new_id()}"
    made = [job_store.create(job(owner_id, compat)) for _ in range(3)]
    claims = claim_job(job_store, made[0].id, "w-activity", max_items=3)
    assert len(claims) == 3
    for claim in claims[:2]:
        assert job_store.complete(claim, lease_keys(claim), None, {"model_seconds": 2.0, "upload_seconds": 0.5}, "tiny", None)
    assert job_store.fail(claims[2], "model_error", "boom")
    # When the last hour is read
    after = queries.last_hour(utcnow() + timedelta(seconds=5))
    # Then twelve buckets, the last one holding the new work, with a positive mean and max
    assert len(after) == 12 and after[0].start < after[-1].start
    assert sum(b.succeeded for b in after) - sum(b.succeeded for b in before) == 2
    assert sum(b.failed for b in after) - sum(b.failed for b in before) == 1
    # (other tests' jobs share the schema and the bucket, so only the max is ours for sure)
    assert after[-1].mean_seconds is not None and after[-1].mean_seconds > 0
    assert after[-1].max_seconds is not None and after[-1].max_seconds >= max(2.5, after[-1].mean_seconds)


def test_failing_endpoints_are_per_owner_with_the_last_error(session_factory: Any, owner_id: str) -> None:
    url = f"https://example.com/{new_id()}"
    now = utcnow()
    with session_factory.begin() as s:
        for status, attempts in (("failed", 5), ("pending", 2), ("delivered", 1)):
            event_id = f"msg_{new_id()}"
            s.add(WebhookEvent(id=event_id, owner_id=owner_id, event_type="job.succeeded", url=url, status=status,
                               attempts=attempts, created_at=now, payload={}))
            s.flush()
            s.add(WebhookAttempt(id=new_id(), event_id=event_id, attempt=1, started_at=now - timedelta(minutes=1),
                                 status_code=500, error=None))
        s.add(WebhookAttempt(id=new_id(), event_id=event_id, attempt=2, started_at=now, status_code=None,
                             error="connection refused"))
    failing = {e.url: e for e in ActivityQueries(session_factory).failing_endpoints(owner_id)}
    assert (failing[url].failed, failing[url].retrying) == (1, 1)
    assert failing[url].last_error == "connection refused"
    assert url not in {e.url for e in ActivityQueries(session_factory).failing_endpoints(new_id())}
