"""Models in storage: a worker of model A never claims model B's job (Postgres and SQLite).

A named model's jobs sit in queues that carry its name (`storage.routing`); the scheduling policy's claim takes
from a queue only jobs of the queue's model, and a worker's store that holds a model claims nothing for a
message of another model's queue. Each test uses model names of its own, so its queues hold only its jobs."""

from __future__ import annotations

import secrets

from storage.jobs.store import HeldModel, JobStore
from storage.routing import model_of_queue, queue_for, served_model
from storage.scheduling import snapshot
from tests.support.storage import Stores, job


def names() -> tuple[str, str]:
    tag = secrets.token_hex(3)
    return f"ft-a.{tag}", f"ft-b.{tag}"


def test_queue_names_carry_the_model() -> None:
    assert queue_for("generate", 1024) == "unipic.generate.l"
    assert queue_for("edit", 256, "anime-1.5b") == "unipic.anime-1.5b.edit.s"
    assert [model_of_queue(q) for q in ("unipic.generate.l", "unipic.anime-1.5b.edit.s")] == [None, "anime-1.5b"]
    assert [served_model(n, "unipic-tiny") for n in ("", "unipic", "unipic-tiny", "anime")] == [None] * 3 + ["anime"]


def test_a_claim_takes_only_its_queues_model(stores: Stores, compat: str) -> None:
    a, b = names()
    a_job = stores.jobs.create(job(stores.owner_id, compat, queue=queue_for("generate", 256, a), model=a))
    # a row whose model is not its queue's (no intake writes one): the policy's claim passes it over
    stray = stores.jobs.create(job(stores.owner_id, compat, queue=queue_for("generate", 256, a), model=b))
    claims = stores.jobs.claim_next(queue_for("generate", 256, a), "worker-a", 60, 8, 1 << 40)
    assert [c.job_id for c in claims] == [a_job.id]
    assert stores.jobs.claim_next(queue_for("generate", 256, a), "worker-a", 60, 8, 1 << 40) == []
    assert stores.jobs.get(stray.id).status == "queued"
    with stores.sessions() as s:  # positions enumerate the same policy: the stray job is in no key's line
        lines = snapshot.take(s, queue_for("generate", 256, a)).lines
    assert all(not line.order for line in lines.values())


def test_a_worker_holding_model_a_never_claims_model_b(stores: Stores, compat: str) -> None:
    a, b = names()
    holding_a = JobStore(stores.sessions, HeldModel(a))
    holding_default = JobStore(stores.sessions, HeldModel(None))
    b_jobs = [stores.jobs.create(job(stores.owner_id, compat, queue=queue_for("generate", 256, b), model=b))
              for _ in range(2)]
    a_job = stores.jobs.create(job(stores.owner_id, compat, queue=queue_for("generate", 256, a), model=a))
    for store in (holding_a, holding_default):  # woken by B's messages: nothing claimed, B's jobs stay queued
        for b_job in b_jobs:
            assert store.claim_for_message(b_job.id, "worker-a", 60, 8, 1 << 40) == []
    assert {stores.jobs.get(j.id).status for j in b_jobs} == {"queued"}
    assert [c.job_id for c in holding_a.claim_for_message(a_job.id, "worker-a", 60, 8, 1 << 40)] == [a_job.id]
    holding_b = JobStore(stores.sessions, HeldModel(b))
    taken = holding_b.claim_for_message(b_jobs[0].id, "worker-b", 60, 8, 1 << 40)
    assert sorted(c.job_id for c in taken) == sorted(j.id for j in b_jobs)
    assert {stores.jobs.get(j.id).worker_id for j in b_jobs} == {"worker-b"}
    assert stores.jobs.get(a_job.id).worker_id == "worker-a"
