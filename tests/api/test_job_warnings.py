"""Users see why a job waits: a queued job whose queue no live worker serves says so, and /ui lists the queue."""

from __future__ import annotations

import secrets
from typing import Any

from storage.fleet.registry import WorkerRegistry
from storage.jobs.ids import new_id
from storage.records import NewJob
from tests.support.waiting import wait_for


def _queued_job(job_store: Any, owner_id: str, queue: str) -> Any:
    params = {"prompt": "a red cube", "negative_prompt": None, "width": 256, "height": 256, "num_images": 1,
              "steps": 4, "guidance_scale": 3.0, "guidance_schedule": "constant", "temperature": 1.0, "seed": 1,
              "output_format": "png"}
    return job_store.create(NewJob(id=new_id(), owner_id=owner_id, kind="generate", params=params,
                                   compat_key=f"generate:256:4:3.0:constant|{queue}", queue=queue, seed=1))


def test_a_queued_job_no_live_worker_serves_says_so_until_one_does(
    client: Any, make_key: Any, job_store: Any, session_factory: Any,
) -> None:
    # Given a queued job on a queue no live worker serves
    record, auth = make_key()
    queue = f"unipic.generate.t{secrets.token_hex(4)}"
    job = _queued_job(job_store, record.id, queue)

    # Then reading it says why it waits, and the status page names the queue
    assert client.get(f"/v1/jobs/{job.id}", headers=auth).json()["warnings"] == ["no_worker_for_queue"]
    assert f'data-unserved-queue="{queue}"' in client.get("/ui").text

    # When a live worker advertises that queue
    registry = WorkerRegistry(session_factory)
    worker_id = f"warnings-test:{secrets.token_hex(4)}"
    registry.register(worker_id=worker_id, hostname="test", pid=1, queues=[queue])
    try:
        # Then the warning goes away (the API caches the served queues for a moment)
        wait_for(lambda: client.get(f"/v1/jobs/{job.id}", headers=auth).json()["warnings"] == [],
                 "the warning to clear", timeout=30)
        assert f'data-unserved-queue="{queue}"' not in client.get("/ui").text
    finally:
        registry.stop(worker_id)
        job_store.request_cancel(job.id, record.id)

    # And a job that is not queued never carries it
    assert client.get(f"/v1/jobs/{job.id}", headers=auth).json()["warnings"] == []
