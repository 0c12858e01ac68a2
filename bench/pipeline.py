"""Model-busy fraction with and without worker pipelining, side by side in one run (issue 20, item 3).

An in-process `workers.runner.batching.BatchRunner` (the real store in a private Postgres schema, the real object store,
the tiny model on CPU) works through a backlog of `--batches` batches of `--batch` jobs twice: serially
(encode -> upload -> complete, then the next batch) and pipelined (`workers.runner.pipeline`: batch N is written while
batch N+1 samples). It reports the fraction of wall time the model was computing and the idle gap between
model calls; results are the same in both (tests/workers/test_pipeline.py checks that).

    python -m bench.worker --model-busy [--batches 12] [--batch 4] [--size 128] [--storage s3|local]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from model.inference import ImageResult, TextResult


@dataclass
class TimedEngine:
    """The engine, with the wall time of each model call recorded (bench only)."""

    inner: Any
    calls: list[tuple[float, float]] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    @property
    def revision(self) -> str:
        return str(self.inner.revision)

    def _timed(self, method: str, requests: list, progress: Any = None, should_cancel: Any = None) -> list:
        start = time.perf_counter()
        try:
            return list(getattr(self.inner, method)(requests, progress=progress, should_cancel=should_cancel))
        finally:
            self.calls.append((start, time.perf_counter()))

    def generate(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list[ImageResult]:
        return self._timed("generate", requests, progress, should_cancel)

    def edit(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list[ImageResult]:
        return self._timed("edit", requests, progress, should_cancel)

    def understand(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list[TextResult]:
        return self._timed("understand", requests, progress, should_cancel)


def _jobs(store: Any, owner_id: str, batches: int, batch: int, size: int, steps_base: int) -> list[str]:
    """`batches` groups of `batch` compatible generate jobs (groups differ in steps, so never merge)."""
    from storage.jobs.ids import new_id
    from storage.records import NewJob
    from storage.routing import queue_for

    seeds = []
    for b in range(batches):
        steps = steps_base + (b % 2)
        for i in range(batch):
            params = {"prompt": f"a red cube {i}", "negative_prompt": None, "width": size, "height": size,
                      "num_images": 1, "steps": steps, "guidance_scale": 3.0, "guidance_schedule": "constant",
                      "temperature": 1.0, "seed": 1000 * b + i, "output_format": "png"}
            job = store.create(NewJob(id=new_id(), owner_id=owner_id, kind="generate", params=params,
                                      compat_key=f"generate:{size}:{steps}:3.0:constant",
                                      queue=queue_for("generate", size), seed=1000 * b + i))
            if i == 0:
                seeds.append(job.id)
    return seeds


def run_one(stack: Any, engine: Any, pipelined: bool, args: argparse.Namespace) -> dict[str, Any]:
    from storage.db import make_engine, make_session_factory
    from storage.jobs.ids import new_id
    from storage.jobs.store import JobStore
    from storage.objects.base import make_object_store
    from storage.tables import ApiKey
    from workers.metrics import WorkerMetrics
    from workers.runner.batching import BatchRunner
    from workers.shutdown import ShutdownGate

    sessions = make_session_factory(make_engine(stack.settings))
    store = JobStore(sessions)
    owner_id = new_id()
    with sessions.begin() as s:
        s.add(ApiKey(id=owner_id, name="bench", key_prefix="upk_bench", key_hash=secrets.token_hex(32),
                     webhook_secret="whsec_" + secrets.token_hex(24)))
    timed = TimedEngine(engine)
    runner = BatchRunner(store=store, objects=make_object_store(stack.settings), engine=timed,
                         settings=stack.settings.model_copy(update={"worker_max_batch": args.batch,
                                                                    "progress_interval_ms": 250}),
                         worker_id=f"bench-pipeline:{int(pipelined)}", metrics=WorkerMetrics(),
                         shutdown=ShutdownGate(30.0), enqueue=lambda jobs: None, pipeline=pipelined)
    # warm-up batch (not counted)
    runner.run(_jobs(store, owner_id, 1, args.batch, args.size, args.steps)[0])
    runner.drain()
    timed.calls.clear()
    seeds = _jobs(store, owner_id, args.batches, args.batch, args.size, args.steps)
    started = time.perf_counter()
    for seed in seeds:
        assert runner.run(seed) == args.batch
    runner.drain()
    wall = time.perf_counter() - started
    busy = sum(end - start for start, end in timed.calls)
    gaps = [timed.calls[i + 1][0] - timed.calls[i][1] for i in range(len(timed.calls) - 1)]
    runner.pipeline.close()
    return {"pipelined": pipelined, "batches": len(seeds), "wall_s": round(wall, 3),
            "model_busy_fraction": round(busy / wall, 3), "gap_between_calls_ms_p50": round(
                1000 * statistics.median(gaps), 1) if gaps else 0.0,
            "images_per_s": round(len(seeds) * args.batch / wall, 3),
            "waited_for_previous_finish_s": round(runner.pipeline.wait_seconds, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json

    import bench.worker as worker_bench
    from model.inference import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--storage", choices=["s3", "local"], default="s3")
    args = ap.parse_args(argv)
    engine = load_engine("tiny")
    rows = []
    worker_bench.REDIS = worker_bench.REDIS or worker_bench.free_redis_db()  # Stack flushes its own db
    with worker_bench.Stack(args.storage) as stack:
        for pipelined in (False, True):
            rows.append(run_one(stack, engine, pipelined, args))
    print(f"{'pipelined':>10}{'wall s':>10}{'model busy':>12}{'gap p50 ms':>12}{'img/s':>8}")
    for r in rows:
        print(f"{r['pipelined']!s:>10}{r['wall_s']:>10}{r['model_busy_fraction']:>12}"
              f"{r['gap_between_calls_ms_p50']:>12}{r['images_per_s']:>8}")
    report = {"storage": args.storage, "size": args.size, "batch": args.batch, "rows": rows}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
