"""`storage.scheduling.snapshot`: queue positions are the scheduling policy's own order (`scheduling.service_order`),
so the estimated order is the order in which claims serve the jobs, on Postgres and SQLite. Each test uses queues
of its own."""

from __future__ import annotations

import secrets

from storage.keys import KeyStore
from storage.records import JobRecord
from storage.scheduling import snapshot as queue_snapshot
from tests.support.storage import Stores, job

WORKER = "snap-worker"


def _owners(stores: Stores, weights: list[float]) -> list[str]:
    owners = []
    for weight in weights:
        owner = stores.new_owner()
        KeyStore(stores.sessions).set_weight(owner, weight)
        owners.append(owner)
    return owners


def _queued(stores: Stores, owners: list[str], queue: str) -> list[JobRecord]:
    return [j for o in owners for j in stores.jobs.page(o, limit=200)[0] if j.queue == queue and j.status == "queued"]


def test_the_estimated_order_is_the_claim_order(stores: Stores) -> None:
    queues = [f"snap.{secrets.token_hex(4)}.{q}" for q in ("a", "b")]
    # Given four keys of different weights with jobs of different work (sizes, images) and priorities in two
    # queues, some of them served already (virtual times and served counts moved apart)
    owners = _owners(stores, [1.0, 2.0, 0.5, 1.0])
    for i, owner in enumerate(owners):
        stores.jobs.create_many([
            job(owner, queue=queues[n % 2], priority=(n * 7 + i) % 3 - 1, size=(256, 512, 128)[(n + i) % 3],
                num_images=1 + (n % 2) * i % 3)
            for n in range(6 + 3 * i)])
    # and two keys of equal weight whose jobs cost 1 and 2 units, so their virtual times tie
    small, large = _owners(stores, [1.0, 1.0])
    for queue in queues:
        stores.jobs.create_many([job(small, queue=queue) for _ in range(6)] +
                                [job(large, queue=queue, num_images=2) for _ in range(3)])
    owners += [small, large]
    for queue in queues:
        assert len(stores.jobs.claim_next(queue, WORKER, 60, max_items=3, max_pixels=1 << 40)) == 3
    for queue in queues:
        queued = _queued(stores, owners, queue)
        # When the queue's order is estimated
        with stores.sessions() as s:
            snapshot = queue_snapshot.take(s, queue)
        positions = {j.id: snapshot.position(j) for j in queued}
        estimated = sorted(positions, key=positions.__getitem__)
        assert sorted(positions.values()) == list(range(len(queued)))
        # Then claims of one job each take exactly that order
        claimed = [c.job_id for _ in queued for c in stores.jobs.claim_next(queue, WORKER, 60, 1, 1 << 40)]
        assert claimed == estimated
        assert stores.jobs.claim_next(queue, WORKER, 60, 1, 1 << 40) == []


def test_a_job_newer_than_the_snapshot_gets_the_position_a_new_read_gives_it(stores: Stores) -> None:
    queue = f"snap.{secrets.token_hex(4)}"
    owners = _owners(stores, [1.0, 3.0, 1.0])
    for i, owner in enumerate(owners):
        stores.jobs.create_many([job(owner, queue=queue, priority=p % 2, size=256 * (1 + p % 2))
                                 for p in range(3 + 2 * i)])
    stores.jobs.claim_next(queue, WORKER, 60, max_items=2, max_pixels=1 << 40)
    for newer in (job(owners[1], queue=queue, priority=1), job(stores.new_owner(), queue=queue, priority=-1)):
        # Given a snapshot of the queue, then a newer job (of a key it knows, then of a key it does not)
        with stores.sessions() as s:
            old = queue_snapshot.take(s, queue)
        _, [record] = stores.jobs.create_many([newer])
        # When a new snapshot is read
        with stores.sessions() as s:
            new = queue_snapshot.take(s, queue)
            # Then the old one places the newer job where the new one does, as the per-job read does
            assert old.position(record) == new.position(record) == queue_snapshot.position(s, record)
