"""Jobs for the worker tests, made the way the API makes them, sent on the broker, and their results read back.

Knows the job params shape, the compatibility key (docs/architecture.md), `JobStore` and the Celery sender;
knows nothing of worker processes or fixtures.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from typing import Any

from PIL import Image

from storage.jobs.store import JobStore
from storage.objects.base import input_key
from storage.records import JobRecord, NewJob
from storage.routing import queue_for


def compat_key(kind: str, params: dict[str, Any]) -> str:
    """The compatibility key as docs/architecture.md defines it."""
    if kind == "understand":
        return f"understand:{params['size']}"
    return f"{kind}:{params['width']}:{params['steps']}:{params['guidance_scale']}:{params['guidance_schedule']}"


def noise_png(size: int = 48, seed: int = 0) -> bytes:
    """A PNG of seeded random pixels (an input image for edit and understand jobs)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _params(kind: str, size: int, seed: int, steps: int, num_images: int, output_format: str,
            guidance_scale: float, max_new_tokens: int = 4) -> dict[str, Any]:
    if kind == "understand":
        return {"question": "what is this?", "size": size, "max_new_tokens": max_new_tokens, "temperature": 0.0,
                "seed": seed}
    params: dict[str, Any] = {
        "width": size, "height": size, "num_images": num_images, "steps": steps, "guidance_scale": guidance_scale,
        "guidance_schedule": "constant", "temperature": 1.0, "seed": seed, "output_format": output_format,
    }
    params["prompt" if kind == "generate" else "instruction"] = "a red cube"
    if kind == "generate":
        params["negative_prompt"] = None
    return params


def new_job(
    objects: Any, owner_id: str, kind: str, size: int, seed: int, steps: int = 2, num_images: int = 1,
    output_format: str = "png", input_bytes: bytes | None = None, priority: int = 0, guidance_scale: float = 3.0,
    tag: str = "", max_new_tokens: int = 4,
) -> NewJob:
    """One job as the API would make it (normalized params, input stored first), not yet inserted."""
    from storage.jobs.ids import new_id

    job_id = new_id()
    params = _params(kind, size, seed, steps, num_images, output_format, guidance_scale, max_new_tokens)
    key = None
    if kind in ("edit", "understand"):
        key = input_key(job_id)
        objects.put(key, input_bytes if input_bytes is not None else noise_png(seed=seed), "image/png")
    return NewJob(
        id=job_id, owner_id=owner_id, kind=kind, params=params,
        compat_key=compat_key(kind, params) + (f"|{tag}" if tag else ""),
        queue=queue_for(kind, size), priority=priority, seed=seed, input_key=key,
    )


def make_job(store: JobStore, objects: Any, owner_id: str, kind: str, size: int, seed: int,
             **options: Any) -> JobRecord:
    """Create one queued job the way the API would (`new_job`'s options)."""
    return store.create(new_job(objects, owner_id, kind, size, seed, **options))


def make_jobs(store: JobStore, objects: Any, owner_id: str, kind: str, size: int, seeds: Iterable[int],
              **options: Any) -> list[JobRecord]:
    """Create queued jobs in ONE transaction, as the API creates a batch: a worker claiming meanwhile sees all
    of them or none. Jobs made one by one while a worker consumes can be split between claims, because any
    message wakes its whole queue (storage.scheduling.policy), a stale one left by an earlier test included."""
    return store.create_many([new_job(objects, owner_id, kind, size, seed, **options) for seed in seeds])[1]


def make_together(store: JobStore, jobs: Iterable[NewJob]) -> list[JobRecord]:
    """Insert jobs of different options (`new_job`'s) in ONE transaction, for the reason `make_jobs` gives."""
    return store.create_many(list(jobs))[1]


def enqueue(store: JobStore, celery: Any, jobs: Iterable[JobRecord], *, stamp_first: bool = False) -> None:
    """Send one `run_batch` message per job and stamp `last_enqueued_at`.

    By default the production contract (storage/routing.py): send, then stamp, so the worker's claim can meet
    the stamp's row locks (a batch-mate the stamp still locks is skipped and left for its own message).
    `stamp_first` stamps before sending, so no lock of ours is held while a worker claims: use it when a test
    asserts which jobs share a batch, and pass every batch-mate (a stamp that covers only some of them may be
    met by a claim for a stale wake-up, which skips the ones it locks).
    """
    from storage.routing import RunBatchSender, send_and_stamp

    refs = [job.ref for job in jobs]
    if stamp_first:
        store.mark_enqueued([ref.id for ref in refs])
        RunBatchSender(celery).send_all(refs)
    else:
        send_and_stamp(celery, store, refs)


def decode(objects: Any, key: str) -> Image.Image:
    """The stored image at `key`, loaded."""
    with Image.open(io.BytesIO(objects.get(key))) as image:
        image.load()
        return image.copy()


def cancel_leftover_jobs(session_factory: Any, except_owner: str | None = None, queue: str | None = None) -> int:
    """Cancel jobs other packages' tests left queued in the shared schema (the API tests submit 1024 px jobs
    that no worker of theirs runs), so tests that start real workers and sweepers measure only their own work.
    `queue` limits it to one queue (`tests.support.claims`)."""
    from sqlalchemy import select

    from storage.tables import Job

    store = JobStore(session_factory)
    with session_factory() as s:
        stmt = select(Job.id, Job.owner_id).where(Job.status == "queued")
        if except_owner is not None:
            stmt = stmt.where(Job.owner_id != except_owner)
        if queue is not None:
            stmt = stmt.where(Job.queue == queue)
        leftovers = s.execute(stmt).all()
    for job_id, owner_id in leftovers:
        store.request_cancel(job_id, owner_id)
    return len(leftovers)
