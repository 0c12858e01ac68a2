"""The model worker end to end: real worker processes, Redis broker, Postgres, S3 (moto) and the tiny model."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Any

import pytest
from PIL import Image

from tests.support.jobs import decode, enqueue, make_together, new_job
from tests.support.waiting import wait_terminal

pytestmark = pytest.mark.system  # starts a model-worker process


def test_forty_mixed_jobs_all_succeed_in_compatible_batches(
    module_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any
) -> None:
    # Given 40 jobs of three kinds at two resolutions, all created before any is enqueued (in one transaction:
    # the module's worker may be taking stale wake-ups of these queues, and would run jobs made one by one as
    # they came, one per claim)
    specs = [(kind, size) for kind in ("generate", "edit", "understand") for size in (64, 128)]
    news = []
    for i in range(40):
        kind, size = specs[i % len(specs)]
        fmt = ("png", "webp", "jpeg")[i % 3]
        news.append(new_job(object_store, owner_id, kind, size, seed=1000 + i,
                            num_images=2 if i % 7 == 0 else 1, output_format=fmt, tag="mixed"))
    jobs = make_together(job_store, news)
    enqueue(job_store, celery_app, jobs)

    # When a worker serves them
    done = wait_terminal(job_store, [j.id for j in jobs], workers=[module_worker])

    # Then every job succeeded with readable results of the right size
    assert {j.status for j in done.values()} == {"succeeded"}, {j.id: j.error_message for j in done.values()}
    for job in done.values():
        assert job.worker_id and job.model_id and job.seed == job.params["seed"]
        assert job.model_seconds is not None and job.upload_seconds is not None and job.queue_seconds is not None
        assert job.attempts == 0
        if job.kind == "understand":
            assert len(job.result_keys or []) == 1 and job.result_keys[0].endswith("/answer.json")
            assert job.result_keys[0].startswith(f"results/{job.id}/")
            answer = json.loads(object_store.get(job.result_keys[0]))
            assert answer["text"] == job.result_text and answer["seed"] == job.seed
            continue
        fmt = job.params["output_format"]
        ext = {"png": "png", "webp": "webp", "jpeg": "jpg"}[fmt]
        prefix = (job.result_keys or [""])[0].rsplit("/", 1)[0]  # results/{job}/{lease}: the completing lease's
        assert prefix.startswith(f"results/{job.id}/")
        assert job.result_keys == [f"{prefix}/{i}.{ext}" for i in range(job.params["num_images"])]
        for key in job.result_keys:
            with Image.open(io.BytesIO(object_store.get(key))) as image:
                assert image.size == (job.params["width"], job.params["height"])
                assert image.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt]

    # And batches were formed, each of one compatibility key only
    batches: dict[tuple[str, Any], list[Any]] = defaultdict(list)
    for job in done.values():
        batches[(job.worker_id, job.started_at)].append(job)
    assert max(j.batch_size for j in done.values()) > 1
    for members in batches.values():
        assert len({m.compat_key for m in members}) == 1
        assert {m.batch_size for m in members} == {len(members)}


def test_an_undecodable_input_fails_only_its_own_job(
    module_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any
) -> None:
    # Given three edit jobs of one batch, one of whose input is not an image (made in one transaction: the
    # module's worker may be taking a stale wake-up of this queue, and one taken between separate inserts would
    # claim only the jobs made so far)
    *good, bad = make_together(job_store, [
        *(new_job(object_store, owner_id, "edit", 64, seed=s, tag="bad-input") for s in (1, 2)),
        new_job(object_store, owner_id, "edit", 64, seed=3, input_bytes=b"not an image", tag="bad-input"),
    ])

    # When a worker takes the batch (all three stamped before sending, in one statement: a stamp still holding
    # one's row lock when the worker claims, for our message or a stale one, would make the claim skip it)
    enqueue(job_store, celery_app, [*good, bad], stamp_first=True)
    done = wait_terminal(job_store, [j.id for j in [*good, bad]], workers=[module_worker])

    # Then only the bad one failed, with invalid_input
    assert done[bad.id].status == "failed" and done[bad.id].error_code == "invalid_input"
    for job in good:
        assert done[job.id].status == "succeeded" and done[job.id].batch_size == 3
        assert decode(object_store, done[job.id].result_keys[0]).size == (64, 64)
