"""storage.lifecycle.store on Postgres + S3 and on SQLite + a local directory: bounded purges keep a tombstone,
upload slots reserve a per-key storage quota and expire, erase clears personal fields.

Purges and expiries select rows table-wide by time, so these tests date their own rows in the year 2000 and
pass `now` in 2000: rows of other tests (finished now) are never candidates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from storage.errors import IllegalTransition, NotFound
from storage.lifecycle.store import Lifecycle, StorageQuotaExceeded
from storage.objects.base import input_key, result_key, upload_key
from storage.tables import Job
from tests.support.claims import claim_job
from tests.support.storage import Stores, job

Y2K = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def objects(stores: Stores, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if stores.backend == "postgres":
        return request.getfixturevalue("object_store")  # S3 (moto)
    from storage.objects.local import LocalObjectStore

    return LocalObjectStore(tmp_path / "objects", secret=b"k" * 32)


def finished_job(stores: Stores, objects: Any, finished_at: datetime, **kw: Any) -> tuple[str, list[str]]:
    """A succeeded job with an input and a result object, finished at `finished_at`."""
    record = stores.jobs.create(job(stores.owner_id, compat=f"generate:256:8:3.0:lc{finished_at.timestamp()}",
                                    **kw))
    claims = claim_job(stores.jobs, record.id, "w")
    keys = [result_key(record.id, claims[0].lease_token, 0, "png"), input_key(record.id)]
    for key in keys:
        objects.put(key, b"bytes", content_type="image/png")
    assert stores.jobs.complete(claims[0], [keys[0]], None, {}, "tiny", "r")
    with stores.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == record.id).values(finished_at=finished_at, input_key=keys[1]))
    return record.id, keys


def test_purge_runs_in_bounded_batches_and_keeps_a_tombstone(stores: Stores, objects: Any) -> None:
    # Given five jobs finished in January 2000, each with an input and a result object
    made = [finished_job(stores, objects, Y2K + timedelta(minutes=i)) for i in range(5)]
    lifecycle = Lifecycle(stores.sessions, objects)
    now = Y2K + timedelta(days=31)
    # When the sweeper purges with a 30-day TTL, two at a time
    passes = [lifecycle.purge_expired(30 * 86400, now=now, limit=2) for _ in range(4)]
    # Then the oldest go first, every object is gone, and the jobs keep their status with a tombstone
    assert [len(p) for p in passes] == [2, 2, 1, 0]
    assert sorted(sum(passes, [])) == sorted(job_id for job_id, _ in made)
    for job_id, keys in made:
        assert not any(objects.exists(k) for k in keys)
        record = stores.jobs.get(job_id)
        assert record.status == "succeeded" and record.purged_at is not None and record.result_keys is None


def test_purge_leaves_recent_results(stores: Stores, objects: Any) -> None:
    job_id, keys = finished_job(stores, objects, Y2K + timedelta(days=20))
    lifecycle = Lifecycle(stores.sessions, objects)
    assert job_id not in lifecycle.purge_expired(30 * 86400, now=Y2K + timedelta(days=31))
    assert all(objects.exists(k) for k in keys)


def test_upload_slots_reserve_the_storage_quota_and_expire(stores: Stores, objects: Any) -> None:
    lifecycle = Lifecycle(stores.sessions, objects)
    owner = stores.owner_id
    ids = [f"{owner}.slot{i}" for i in range(4)]
    for upload_id in ids[:3]:
        lifecycle.open_upload(owner, upload_id, 100, 300, 60, now=Y2K)
        objects.put(upload_key(upload_id), b"png", content_type="image/png")
    with pytest.raises(StorageQuotaExceeded):
        lifecycle.open_upload(owner, ids[3], 100, 300, 60, now=Y2K)
    other = stores.new_owner()
    lifecycle.open_upload(other, f"{other}.slot", 100, 300, 60, now=Y2K)  # quotas are per key
    assert lifecycle.upload_live(owner, ids[0], now=Y2K)
    assert not lifecycle.upload_live(other, ids[0], now=Y2K)
    # When they expire, the sweeper deletes objects and rows in bounded batches, and the quota is free again
    later = Y2K + timedelta(minutes=5)
    assert not lifecycle.upload_live(owner, ids[0], now=later)
    assert lifecycle.expire_uploads(now=later, limit=2) == 2
    assert lifecycle.expire_uploads(now=later, limit=10) == 2
    assert not any(objects.exists(upload_key(u)) for u in ids[:3])
    lifecycle.open_upload(owner, ids[3], 100, 300, 60, now=later)


def test_erase_clears_personal_fields_of_finished_jobs_only(stores: Stores, objects: Any) -> None:
    job_id, keys = finished_job(stores, objects, Y2K + timedelta(days=400), custom_id="c-1",
                                metadata={"user": "u"}, webhook_url="https://hooks.example/x")
    lifecycle = Lifecycle(stores.sessions, objects)
    with pytest.raises(NotFound):
        lifecycle.erase_job(job_id, stores.new_owner())
    erased = lifecycle.erase_job(job_id, stores.owner_id)
    assert erased.status == "succeeded" and erased.purged_at is not None
    assert erased.params["prompt"] is None and erased.params["width"] == 256
    assert erased.metadata is None and erased.custom_id is None and erased.webhook_url is None
    assert not any(objects.exists(k) for k in keys)
    queued = stores.jobs.create(job(stores.owner_id))
    with pytest.raises(IllegalTransition):
        lifecycle.erase_job(queued.id, stores.owner_id)


def test_stale_attempts_objects_are_swept_in_bounded_passes_and_the_served_ones_kept(
    stores: Stores, objects: Any,
) -> None:
    # Given three jobs finished in January 2000, each with objects a stale attempt left under another lease
    made = [finished_job(stores, objects, Y2K + timedelta(minutes=i)) for i in range(3)]
    stale = {job_id: [f"results/{job_id}/stale-lease/0.png", f"results/{job_id}/stale-lease/1.png"]
             for job_id, _ in made}
    for key in sum(stale.values(), []):
        objects.put(key, b"late", content_type="image/png")
    lifecycle = Lifecycle(stores.sessions, objects)
    # When the sweeper runs, two jobs a pass, before and after the grace period (other tests' jobs of 2000 too)
    assert not set(stale) & set(lifecycle.sweep_stale_results(3600, now=Y2K + timedelta(minutes=30), limit=2))
    swept: list[str] = []
    while set(stale) - set(swept):
        done = lifecycle.sweep_stale_results(3600, now=Y2K + timedelta(hours=2), limit=2)
        assert 0 < len(done) <= 2
        swept += done
    # Then the oldest go first, every stale object is gone, and what the jobs record is still there
    assert [j for j in swept if j in stale] == [job_id for job_id, _ in made]
    for job_id, keys in made:
        assert not any(objects.exists(k) for k in stale[job_id])
        assert objects.exists(keys[0]) and stores.jobs.get(job_id).results_swept_at is not None
