"""Recovery through the sweeper: a worker killed mid-batch, and a broker that lost every message."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from storage.routing import queue_for, send_and_stamp
from storage.tables import Job, utcnow
from tests.support import REPO
from tests.support.jobs import enqueue, make_job, make_jobs
from tests.support.storage import job as new_job
from tests.support.waiting import wait_for, wait_terminal
from workers.sweeper import Sweeper


@pytest.mark.system  # starts model-worker processes
def test_a_worker_killed_mid_batch_loses_nothing(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any, registry: Any,
    settings: Any, tmp_path: Path,
) -> None:
    # Given a batch of four running on a worker with short leases (the four made in one transaction: the worker
    # may be taking stale wake-ups of this queue left by earlier tests, and one taken between four separate
    # inserts would claim only the jobs made so far), held after its first step by a file gate never released,
    # so the kill lands mid-batch however long the wait for that step takes on a loaded machine
    doomed = start_worker("doomed", UNIPIC_LEASE_SECONDS="2", UNIPIC_FAULT_HOLD_FILE=str(tmp_path / "never-released"))
    jobs = make_jobs(job_store, object_store, owner_id, "generate", 64, seeds=range(300, 304), steps=6, tag="kill")
    ids = [j.id for j in jobs]
    enqueue(job_store, celery_app, jobs, stamp_first=True)  # no stamp lock of ours may split the batch
    wait_for(lambda: all(j.status == "running" and (j.progress_step or 0) >= 1 for j in job_store.get_many(ids)),
             "the batch to be mid-run")

    # When that worker is SIGKILLed and another worker plus the sweeper take over
    doomed.kill()
    rescuer = start_worker("rescuer", wait=False)
    sweeper = Sweeper.from_settings(settings.model_copy(update={"sweep_interval_seconds": 0.3}))
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        rescuer.wait_ready(registry)
        done = wait_terminal(job_store, ids, workers=[doomed, rescuer])
    finally:
        stop.set()
        thread.join(timeout=10)

    # Then every job succeeded exactly once, on the second worker, on its second attempt
    rescuer_ids = {w.id for w in registry.all() if w.pid == rescuer.pid}
    for job in done.values():
        assert job.status == "succeeded", (job.id, job.error_code, job.error_message)
        assert job.attempts == 1 and job.worker_id in rescuer_ids and job.batch_size == 4
        # and its result objects are exactly the recorded keys: one image, no orphan, no duplicate
        assert sorted(object_store.page(f"results/{job.id}/")) == sorted(job.result_keys)
        assert len(job.result_keys) == 1 and job.result_keys[0].endswith("/0.png")


@pytest.mark.system  # starts model-worker processes
def test_jobs_survive_the_broker_losing_every_message(
    start_worker: Any, job_store: Any, object_store: Any, owner_id: str, celery_app: Any, redis_url: str,
    worker_env: dict[str, str],
) -> None:
    # Given queued jobs whose messages are in Redis
    jobs = [make_job(job_store, object_store, owner_id, kind, 64, seed=40 + i, tag="flush")
            for i, kind in enumerate(["generate", "generate", "understand", "edit", "understand"])]
    enqueue(job_store, celery_app, jobs)
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(queue_for("generate", 64)) >= 2

    # When Redis loses its data before any worker ran
    broker.flushdb()
    assert broker.llen(queue_for("generate", 64)) == 0

    # Then the sweeper (`unipic sweeper`) re-enqueues them and a worker completes every one
    env = {**worker_env, "UNIPIC_REQUEUE_AFTER_SECONDS": "1", "UNIPIC_SWEEP_INTERVAL_SECONDS": "0.5"}
    sweeper = subprocess.Popen([sys.executable, "-m", "cli.main", "sweeper"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = start_worker("after-flush")
        done = wait_terminal(job_store, [j.id for j in jobs], workers=[worker])
    finally:
        sweeper.terminate()
        sweeper.wait(timeout=30)
    for job in done.values():
        assert job.status == "succeeded" and job.attempts == 0, (job.id, job.error_message)



def test_an_old_backlog_whose_messages_wait_in_the_broker_is_not_sent_again(
    job_store: Any, celery_app: Any, registry: Any, object_store: Any, settings: Any, owner_id: str,
    redis_url: str, session_factory: Any,
) -> None:
    # Given five queued jobs of a queue of their own, each one's message sent and waiting in the broker, all sent
    # longer ago than the sweeper's re-enqueue age (a backlog no worker has reached yet)
    queue = f"unipic.generate.t{secrets.token_hex(4)}"
    _, jobs = job_store.create_many([new_job(owner_id, queue=queue) for _ in range(5)])
    ids = {j.id for j in jobs}
    send_and_stamp(celery_app, job_store, [j.ref for j in jobs])
    with session_factory.begin() as s:
        s.execute(update(Job).where(Job.id.in_(ids)).values(last_enqueued_at=utcnow() - timedelta(hours=1)))
    broker = redis.Redis.from_url(redis_url)
    sweeper = Sweeper(job_store, registry, celery_app, settings.model_copy(update={"requeue_after_seconds": 60.0}),
                      object_store)
    try:
        # When the sweeper passes, then none is sent again (the shared schema's other queues are not ours to judge)
        assert ids & set(sweeper.reenqueue_lost()) == set()
        assert broker.llen(queue) == 5

        # When the broker loses two of the messages, then the next pass sends exactly two, and the one after none
        broker.ltrim(queue, 0, 2)
        assert len(ids & set(sweeper.reenqueue_lost())) == 2
        assert broker.llen(queue) == 5
        assert ids & set(sweeper.reenqueue_lost()) == set()
    finally:
        broker.delete(queue)
        for j in jobs:
            job_store.request_cancel(j.id, owner_id)
