"""Continuous batching (a running set) vs whole-batch execution on the same staggered arrivals (never in the suite).

`python -m bench.running_set`: the tiny model on CPU. Requests arrive over time (exponential gaps); whole-batch
takes every compatible request that has arrived (up to `--max-items`), runs it to the last step, then looks
again; continuous admits arrivals between steps into one running set (up to `--max-items` live) and retires
items as they finish. Two workloads: every request with the same steps, and mixed steps (whole-batch can only
batch equal steps; a running set mixes them). Two loads: a backlog (arrivals faster than the model) and spread
arrivals (about 70 % of the model's throughput). Printed per run: images/s (first arrival to last finish),
latency p50/p95 (finish - arrival), busy % (wall time inside model calls), ragged % (steps whose items stood at
different steps: their rows run packed) and avoided % (token rows through the MAR encoder and LLM chunk that
padding every row to the widest would have added, of the rows computed), and the largest pixel difference
between the two modes' images of the same request (uint8 levels).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.inference import GenerateRequest, UniPicEngine, load_engine


@dataclass
class Run:
    images_per_s: float
    p50: float
    p95: float
    busy: float
    ragged: float
    pad_avoided: float
    images: dict[str, list[Image.Image]]


def workload(n: int, size: int, steps: list[int], rng: random.Random) -> list[GenerateRequest]:
    return [GenerateRequest(f"r{i}", f"a photo of object number {i}", seed=i, size=size, steps=rng.choice(steps),
                            guidance_scale=3.0) for i in range(n)]


def arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    """Arrival offsets (s) with exponential gaps at `rate` per second; the first at 0."""
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.busy += time.perf_counter() - start

    def wait_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))


def summarize(reqs: list[GenerateRequest], at: dict[str, float], done: dict[str, float], clock: Clock,
              padding: tuple[float, float], images: dict[str, list[Image.Image]]) -> Run:
    lat = np.array([done[r.id] - at[r.id] for r in reqs])
    span = max(done.values()) - min(at.values())
    count = sum(r.num_images for r in reqs)
    return Run(count / span, float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), clock.busy / span,
               *padding, images)


def stagger_whole(call: Callable[[list[Any]], list[Any]], reqs: list[Any], at: dict[str, float],
                  batch_of: Callable[[list[Any]], list[Any]]) -> tuple[Clock, dict[str, float], dict[str, Any]]:
    """Whole batches: `call` on `batch_of` the requests that have arrived, to the end, then look again.
    -> the clock, finish time and result per request."""
    clock, waiting, done, results = Clock(), list(reqs), {}, {}
    while waiting:
        ready = [r for r in waiting if at[r.id] <= clock.now()]
        if not ready:
            clock.wait_until(min(at[r.id] for r in waiting))
            continue
        out = clock.timed(call, batch_of(ready))
        finished = clock.now()
        for res in out:
            done[res.id], results[res.id] = finished, res
        waiting = [r for r in waiting if r.id not in done]
    return clock, done, results


def stagger_continuous(rs: Any, reqs: list[Any], at: dict[str, float], max_items: int
                       ) -> tuple[Clock, dict[str, float], dict[str, Any]]:
    """One set (`engine.open_set`): arrivals admitted between two steps up to `max_items` live, each retired at
    its end. -> the clock, finish time and finished item per request."""
    clock, waiting, done, results = Clock(), list(reqs), {}, {}
    while waiting or rs.items:
        room = max_items - len(rs.items)
        joining = [r for r in waiting if at[r.id] <= clock.now()][:room]
        if joining:
            clock.timed(rs.admit, joining)
            waiting = [r for r in waiting if r not in joining]
        if not rs.items:
            clock.wait_until(min(at[r.id] for r in waiting))
            continue
        for f in clock.timed(rs.step):
            done[f.id], results[f.id] = clock.now(), f
    return clock, done, results


def run_whole(engine: UniPicEngine, reqs: list[GenerateRequest], at: dict[str, float], max_items: int) -> Run:
    def oldest_class(ready: list[GenerateRequest]) -> list[GenerateRequest]:
        return [r for r in ready if r.steps == ready[0].steps][:max_items]

    clock, done, results = stagger_whole(engine.generate, reqs, at, oldest_class)
    return summarize(reqs, at, done, clock, (0.0, 0.0), {k: r.images for k, r in results.items()})


def run_continuous(engine: UniPicEngine, reqs: list[GenerateRequest], at: dict[str, float], max_items: int) -> Run:
    rs = engine.open_set("generate", reqs[0].size)
    clock, done, finished = stagger_continuous(rs, reqs, at, max_items)
    st = rs.stats
    padding = (st.ragged_steps / max(st.steps, 1), st.pad_rows_saved / max(st.token_rows, 1))
    return summarize(reqs, at, done, clock, padding, {k: f.images for k, f in finished.items()})


def level_diff(a: dict[str, list[Image.Image]], b: dict[str, list[Image.Image]]) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
               for k in a for x, y in zip(a[k], b[k], strict=True))


def ragged_step_cost(engine: UniPicEngine, size: int, steps: int, items: int, repeats: int = 10,
                     sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Seconds of one step over `items` items standing at every step of their schedule (as many phases as
    `steps` allows, the items spread over them: how a continuous set runs in a steady stream) and of a step over
    the same number of items in one phase, averaged over all phases (how whole batches run): medians of
    `repeats`. Their ratio is what raggedness costs (padding, before rows were packed)."""
    def req(i: int) -> GenerateRequest:
        return GenerateRequest(f"c{i}", f"a photo of object number {i}", seed=i, size=size, steps=steps,
                               guidance_scale=3.0)

    def timed_steps(rs: Any, n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            rs.step(decode=False)
        sync()
        return (time.perf_counter() - t0) / n

    phases = min(steps, items)
    aligned, ragged = [], []
    for _ in range(repeats):
        rs = engine.open_set("generate", size)
        rs.admit([req(i) for i in range(items)])
        aligned.append(timed_steps(rs, steps))
        rs = engine.open_set("generate", size)
        for k in range(phases):  # admitted a phase apart: item groups at steps phases-1 .. 0
            rs.admit([req(100 + i) for i in range(k * items // phases, (k + 1) * items // phases)])
            if k < phases - 1:
                rs.step(decode=False)
        ragged.append(timed_steps(rs, 1))
    return float(np.median(aligned)), float(np.median(ragged))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-items", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = load_engine("tiny")
    warm = [GenerateRequest(f"w{i}", "warm-up", seed=i, size=args.size, steps=args.steps) for i in range(args.max_items)]
    engine.generate(warm[:1])
    t0 = time.perf_counter()
    engine.generate(warm)
    capacity = args.max_items / (time.perf_counter() - t0)  # images/s of one full whole batch
    print(f"tiny model, CPU ({torch.get_num_threads()} threads), {args.size} px, {args.requests} requests, "
          f"at most {args.max_items} items; whole batch of {args.max_items}: {capacity:.2f} images/s", flush=True)
    aligned, ragged = ragged_step_cost(engine, args.size, args.steps, args.max_items)
    print(f"a step of {args.max_items} items at {min(args.steps, args.max_items)} different steps: {1000 * ragged:.1f} "
          f"ms; in one phase (mean over the phases): {1000 * aligned:.1f} ms; ratio {ragged / aligned:.2f}", flush=True)
    mixed = sorted({max(1, args.steps // 2), args.steps, args.steps * 3 // 2})
    header = (f"{'workload':<16} {'load':<8} {'mode':<11} {'images/s':>9} {'p50 s':>7} {'p95 s':>7} {'busy %':>7} "
              f"{'ragged %':>8} {'avoided %':>9} {'max Δ lvl':>9}")
    print(header)
    print("-" * len(header))
    for name, steps in ((f"steps {args.steps}", [args.steps]), (f"steps {'/'.join(map(str, mixed))}", mixed)):
        for load, rate in (("backlog", 4 * capacity), ("spread", 0.7 * capacity)):
            rng = random.Random(args.seed)
            reqs = workload(args.requests, args.size, steps, rng)
            at = dict(zip([r.id for r in reqs], arrivals(len(reqs), rate, rng), strict=True))
            whole = run_whole(engine, reqs, at, args.max_items)
            cont = run_continuous(engine, reqs, at, args.max_items)
            diff = level_diff(whole.images, cont.images)
            for mode, run in (("whole", whole), ("continuous", cont)):
                print(f"{name:<16} {load:<8} {mode:<11} {run.images_per_s:9.2f} {run.p50:7.2f} {run.p95:7.2f} "
                      f"{100 * run.busy:7.1f} {100 * run.ragged:8.1f} {100 * run.pad_avoided:9.1f} "
                      f"{diff if mode == 'continuous' else '':>9}", flush=True)


if __name__ == "__main__":
    main()
