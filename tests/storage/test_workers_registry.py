"""WorkerRegistry: register, heartbeat, stop, liveness."""

from __future__ import annotations

import secrets
from typing import Any

from storage.fleet.registry import WorkerRegistry


def test_lifecycle(storage_sessions: Any) -> None:
    registry = WorkerRegistry(storage_sessions)
    worker_id = f"gpu-{secrets.token_hex(3)}@host"
    rec = registry.register(worker_id, "host", 123, device="cpu", model_id="tiny", kinds=["generate"],
                            max_pixels=1024 * 1024, max_batch=8, queues=["unipic.generate.s"])
    assert rec.kinds == ["generate"] and rec.jobs_served == 0
    assert registry.heartbeat(worker_id, batches=2, jobs=5)
    assert registry.heartbeat(worker_id, batches=1, jobs=1)
    live = {w.id: w for w in registry.live(stale_after_seconds=60)}
    assert live[worker_id].jobs_served == 6 and live[worker_id].batches_served == 3
    registry.stop(worker_id)
    assert worker_id not in {w.id for w in registry.live(stale_after_seconds=60)}
    assert worker_id in {w.id for w in registry.all()}
    assert not registry.heartbeat("unknown-worker")
    again = registry.register(worker_id, "host", 456)  # restart with the same id starts anew
    assert again.pid == 456 and again.stopped_at is None and again.jobs_served == 0
