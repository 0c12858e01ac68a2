"""The embedded stack: `unipic worker` on SQLite, a local object store and the SQLite-backed broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage.db import make_engine, make_session_factory
from storage.jobs.store import JobStore
from storage.objects.base import make_object_store
from tests.support import REPO
from tests.support.jobs import decode, enqueue, make_job
from tests.support.waiting import wait_terminal
from workers.app import make_celery

pytestmark = pytest.mark.system  # starts `unipic worker`


def test_unipic_worker_serves_the_embedded_stack(
    embedded_settings: Any, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Given the embedded defaults (nothing configured but a data directory) and a key
    from storage.jobs.ids import new_id
    from storage.tables import ApiKey

    sessions = make_session_factory(make_engine(embedded_settings))
    store, objects = JobStore(sessions), make_object_store(embedded_settings)
    owner = new_id()
    with sessions.begin() as s:
        s.add(ApiKey(id=owner, name="embedded", key_prefix="upk_emb", key_hash="0" * 64, webhook_secret="whsec_x"))
    celery = make_celery(embedded_settings)
    assert celery.conf.broker_transport_options == {}  # the SQLAlchemy transport takes no visibility timeout

    # When jobs are enqueued and `unipic worker` runs
    jobs = [make_job(store, objects, owner, kind, 64, seed=i) for i, kind in enumerate(["generate", "understand"])]
    enqueue(store, celery, jobs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIPIC_")}
    env.update(UNIPIC_DATA_DIR=str(embedded_settings.data_dir), UNIPIC_MODEL_DTYPE="float32", PYTHONUNBUFFERED="1")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--device", "cpu", "--model", str(tiny_checkpoint)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            done = wait_terminal(store, [j.id for j in jobs])
        finally:
            worker.terminate()
            assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]

    # Then both succeeded with their results in the local object store
    assert {j.status for j in done.values()} == {"succeeded"}, log.read_text()[-3000:]
    assert decode(objects, done[jobs[0].id].result_keys[0]).size == (64, 64)
    assert done[jobs[1].id].result_text is not None
