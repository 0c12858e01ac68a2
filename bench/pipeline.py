"""Model-busy fraction of the worker loops side by side in one run (issue 20, item 3; issue 25, figures).

An in-process runner (the real store in a private Postgres schema, the real object store, the tiny model on
CPU) works through the same workload of `--batches` groups of `--batch` jobs (groups alternate `--steps` and
`--steps`+1, so whole batches never merge) three times:
- whole serial: `workers.runner.batching.BatchRunner`, encode -> upload -> complete, then the next batch;
- whole pipelined: the same with `workers.runner.pipeline` (batch N is written while batch N+1 samples);
- continuous: `workers.runner.continuous.ContinuousRunner` (the default), `--batch` rows in a running set that
  claims the rows a step frees while it samples (off the sampling thread); its steps and admissions
  (conditioning) are the model calls;
- continuous inline: the same, claiming between steps on the sampling thread (`UNIPIC_WORKER_CLAIM_AHEAD=false`).
It reports the fraction of wall time the model was computing (target under backlog: >= 95 %), the idle gap
between model calls, images/s, and each job's latency (creation to result, p50 / p95; the JSON adds creation to
claim). By default the workload is a backlog queued before the clock starts, one
message per group. With `--arrival-gap-ms G` a background thread creates the jobs G ms apart (the clock starts
with the first) and each job sends its own message, as the API does; the runner serves them in arrival order.

    python -m bench.worker --model-busy [--batches 12] [--batch 4] [--size 128] [--steps 2] [--kind edit]
                                        [--storage s3|local] [--arrival-gap-ms 0] [--modes ...]
                                        [--repeat 1] [--host-memory-reuse on|off]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time
from typing import Any

from bench.timed import TimedEngine

MODES = ("whole serial", "whole pipelined", "continuous", "continuous inline")


def new_owner(sessions: Any) -> str:
    """A new API key (`storage.keys.KeyStore`, as `unipic keys create` makes one); its id owns the bench's jobs."""
    from storage.keys import KeyStore

    record, _ = KeyStore(sessions).create("bench")
    return record.id


def create_job(store: Any, owner_id: str, size: int, steps: int, seed: int, kind: str = "generate",
               objects: Any = None, input_px: int = 512) -> str:
    """A queued job as the API makes it; an edit's input (seeded noise, `input_px` square PNG) is stored first."""
    import io

    import numpy as np
    from PIL import Image

    from storage.jobs.ids import new_id
    from storage.objects.base import input_key
    from storage.records import NewJob
    from storage.routing import queue_for

    job_id, key = new_id(), None
    params = {"width": size, "height": size, "num_images": 1, "steps": steps, "guidance_scale": 3.0,
              "guidance_schedule": "constant", "temperature": 1.0, "seed": seed, "output_format": "png"}
    if kind == "edit":
        params["instruction"] = f"make it red {seed}"
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (input_px, input_px, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        key = input_key(job_id)
        objects.put(key, buf.getvalue(), "image/png")
    else:
        params.update(prompt=f"a red cube {seed}", negative_prompt=None)
    return store.create(NewJob(id=job_id, owner_id=owner_id, kind=kind, params=params,
                               compat_key=f"{kind}:{size}:{steps}:3.0:constant", queue=queue_for(kind, size),
                               seed=seed, input_key=key)).id


def _workload(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(steps, seed) of every job, group after group."""
    return [(args.steps + b % 2, 1000 * b + i) for b in range(args.batches) for i in range(args.batch)]


def make_runner(stack: Any, store: Any, engine: TimedEngine, mode: str, batch: int) -> Any:
    from storage.objects.base import make_object_store
    from workers.metrics import WorkerMetrics
    from workers.runner.batching import BatchRunner
    from workers.runner.continuous import ContinuousRunner
    from workers.shutdown import ShutdownGate

    cls = ContinuousRunner if mode.startswith("continuous") else BatchRunner
    settings = stack.settings.model_copy(update={"worker_max_batch": batch, "progress_interval_ms": 250,
                                                 "worker_batching": mode.split()[0],
                                                 "worker_claim_ahead": mode != "continuous inline"})
    return cls(store=store, objects=make_object_store(stack.settings), engine=engine, settings=settings,
               worker_id=f"bench-pipeline:{mode.replace(' ', '-')}", metrics=WorkerMetrics(),
               shutdown=ShutdownGate(30.0), enqueue=lambda jobs: None, pipeline=mode == "whole pipelined")


def _backlog(store: Any, owner_id: str, args: argparse.Namespace, objects: Any) -> tuple[list[str], list[str]]:
    """Every job queued now; one message per group (its first job)."""
    ids = [create_job(store, owner_id, args.size, steps, seed, args.kind, objects) for steps, seed in _workload(args)]
    return ids, ids[:: args.batch]


def _arrivals(store: Any, owner_id: str, args: argparse.Namespace, messages: queue.Queue[str | None],
              ids: list[str], objects: Any) -> None:
    """Jobs created `--arrival-gap-ms` apart, each with its own message; None when the last has arrived."""
    due = time.perf_counter()
    try:
        for steps, seed in _workload(args):
            ids.append(create_job(store, owner_id, args.size, steps, seed, args.kind, objects))
            messages.put(ids[-1])
            due += args.arrival_gap_ms / 1000
            time.sleep(max(0.0, due - time.perf_counter()))  # pacing the arrivals, not waiting on a state
    finally:
        messages.put(None)


def _serve(runner: Any, messages: queue.Queue[str | None]) -> int:
    served = 0
    while (job_id := messages.get()) is not None:
        served += runner.run(job_id)
    return served


def run_one(stack: Any, engine: Any, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from storage.db import make_engine, make_session_factory
    from storage.jobs.events import attach_from_settings
    from storage.jobs.store import JobStore

    sessions = make_session_factory(make_engine(stack.settings))
    attach_from_settings(sessions, stack.settings)  # queue wake-ups on Redis, as the API's store sends them
    store = JobStore(sessions)
    owner_id = new_owner(sessions)
    timed = TimedEngine(engine)
    runner = make_runner(stack, store, timed, mode, args.batch)
    objects = runner.objects
    warm = [create_job(store, owner_id, args.size, args.steps, 10**6 + i, args.kind, objects)
            for i in range(args.batch)]
    runner.run(warm[0])  # warm-up batch (not counted)
    runner.drain()
    timed.clear()
    messages: queue.Queue[str | None] = queue.Queue()
    ids: list[str] = []
    if args.arrival_gap_ms > 0:
        started = time.perf_counter()
        threading.Thread(target=_arrivals, args=(store, owner_id, args, messages, ids, objects), daemon=True).start()
    else:
        ids, seeds = _backlog(store, owner_id, args, objects)
        for seed in seeds:
            messages.put(seed)
        messages.put(None)
        started = time.perf_counter()
    served = _serve(runner, messages)
    runner.drain()
    wall = time.perf_counter() - started
    runner.pipeline.close()
    done = store.get_many(ids)
    assert served == len(ids) == args.batches * args.batch, (served, len(ids))
    assert all(j.status == "succeeded" for j in done), [(j.id, j.status, j.error_message) for j in done]
    calls = sorted(timed.calls)
    busy = sum(end - start for start, end in calls)
    gaps = [calls[i + 1][0] - calls[i][1] for i in range(len(calls) - 1)]
    steps = [e for e in timed.events if e.what == "step"]
    queued = sorted((j.started_at - j.created_at).total_seconds() for j in done)  # type: ignore[operator]
    waits = sorted((j.finished_at - j.created_at).total_seconds() for j in done)  # type: ignore[operator]
    return {"model_ms_per_image": round(1000 * busy / len(ids), 1),
            # a running set's model time by call (a step that finishes one image decodes it too); whole: none
            "set_calls_s": {what: round(sum(e.end - e.start for e in timed.events if e.what == what), 3)
                            for what in ("admit", "step", "decode")},
            "items_per_step": round(statistics.fmean(len(e.ids) for e in steps), 2) if steps else None,
            "mode": mode, "jobs": len(ids), "model_calls": len(calls), "wall_s": round(wall, 3),
            "model_busy_fraction": round(busy / wall, 3),
            "gap_between_calls_ms_p50": round(1000 * statistics.median(gaps), 1) if gaps else 0.0,
            "gap_between_calls_ms_mean": round(1000 * statistics.fmean(gaps), 1) if gaps else 0.0,
            "images_per_s": round(len(ids) / wall, 3),
            # a job's time from its creation to its result (queued, sampled, decoded, written), and to its claim
            "latency_ms_p50": round(1000 * statistics.median(waits)),
            "latency_ms_p95": round(1000 * waits[int(0.95 * (len(waits) - 1))]),
            "queued_ms_p50": round(1000 * statistics.median(queued)),
            "waited_for_previous_finish_s": round(runner.pipeline.wait_seconds, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json

    import bench.worker as worker_bench
    from model.inference import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4, help="jobs per whole batch; rows of the running set")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--kind", choices=["generate", "edit"], default="generate",
                    help="edit: each job has a 512 px PNG input in the object store (read and decoded at admission)")
    ap.add_argument("--storage", choices=["s3", "local"], default="s3")
    ap.add_argument("--arrival-gap-ms", type=float, default=0.0,
                    help="jobs arrive this far apart while the runner works (0: a backlog queued up front)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every mode, alternating; prints medians")
    ap.add_argument("--host-memory-reuse", choices=("on", "off"), default="on",
                    help="as a worker's UNIPIC_WORKER_HOST_MEMORY_REUSE (workers.device.host_memory)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}")
    if args.host_memory_reuse == "on":
        from workers.device.host_memory import keep_host_memory

        keep_host_memory()  # as the worker does before it loads the model
    engine = load_engine("tiny")
    rows = []
    worker_bench.REDIS = worker_bench.REDIS or worker_bench.free_redis_db()  # Stack flushes its own db
    with worker_bench.Stack(args.storage) as stack:
        for _ in range(args.repeat):  # modes alternate round after round: a slow spell of the box hits them alike
            for mode in modes:
                rows.append(run_one(stack, engine, mode, args))
    print(f"{'mode':>24}{'wall s':>9}{'model busy':>12}{'gap p50 ms':>12}{'gap mean ms':>13}{'img/s':>8}"
          f"{'model ms/img':>14}{'calls':>7}{'p50 ms':>8}{'p95 ms':>8}")
    for r in rows:
        print(f"{r['mode']:>24}{r['wall_s']:>9}{r['model_busy_fraction']:>12}{r['gap_between_calls_ms_p50']:>12}"
              f"{r['gap_between_calls_ms_mean']:>13}{r['images_per_s']:>8}{r['model_ms_per_image']:>14}"
              f"{r['model_calls']:>7}{r['latency_ms_p50']:>8}{r['latency_ms_p95']:>8}")
    medians = {}
    if args.repeat > 1:
        for mode in modes:
            mine = [r for r in rows if r["mode"] == mode]
            medians[mode] = {k: statistics.median(r[k] for r in mine)
                             for k in ("model_busy_fraction", "images_per_s", "model_ms_per_image")}
            m = medians[mode]
            print(f"{'median ' + mode:>24}{'':>9}{m['model_busy_fraction']:>12.3f}{'':>12}{'':>13}"
                  f"{m['images_per_s']:>8.3f}{m['model_ms_per_image']:>14.1f}")
    report = {"host_memory_reuse": args.host_memory_reuse, "kind": args.kind, "storage": args.storage,
              "size": args.size, "batch": args.batch, "steps": args.steps, "arrival_gap_ms": args.arrival_gap_ms, "repeat": args.repeat, "rows": rows, "medians": medians}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
