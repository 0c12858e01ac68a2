"""`storage.queue_snapshot`: one read of a queue answers every queued job's position exactly as
`storage.queue_estimates.position` counts it (fair share across keys with their weights, then priority and age),
on Postgres and SQLite. Each test uses a queue of its own."""

from __future__ import annotations

import secrets

from storage import queue_estimates, queue_snapshot
from tests.support.storage import Stores, job


def test_snapshot_positions_match_the_per_job_count(stores: Stores) -> None:
    queue = f"snap.{secrets.token_hex(4)}"
    # Given three keys with queued work in one queue, some of it served already (virtual times moved)
    owners = [stores.owner_id, stores.new_owner(), stores.new_owner()]
    for i, owner in enumerate(owners):
        stores.jobs.create_many([job(owner, queue=queue, priority=p % 2) for p in range(3 + 2 * i)])
    stores.jobs.claim_next(queue, "snap-worker", 60, max_items=2, max_pixels=1 << 40)
    queued = [j for j in stores.jobs.page(owners[0], limit=200)[0] if j.queue == queue]
    queued += [j for o in owners[1:] for j in stores.jobs.page(o, limit=200)[0] if j.queue == queue]
    # When one snapshot of the queue is taken
    with stores.sessions() as s:
        snapshot = queue_snapshot.take(s, queue)
        expected = {j.id: queue_estimates.position(s, j) for j in queued}
    # Then it answers every job as the per-job count does
    assert {j.id: snapshot.position(j) for j in queued} == expected
    assert 0 in expected.values() and max(expected.values()) > 2
