"""Token-level continuous batching for understanding vs whole batches on the same staggered arrivals (never in the
suite).

`python -m bench.decode_set`: the tiny model on CPU. Understand requests (questions of different lengths, token
limits drawn from `--tokens`) arrive over time (exponential gaps); whole-batch takes every request that has arrived
(up to `--max-items`) and decodes it until its longest answer ends, then looks again; continuous admits arrivals
between two tokens into one decode set (up to `--max-items` live) and retires each answer at its last token. Two
loads: a backlog (arrivals faster than the model) and spread arrivals (about 70 % of a full batch's throughput).
Printed per run: answers/s and tokens/s (the answers re-tokenized; first arrival to last finish), latency p50/p95
(finish - arrival), busy % (wall time inside model calls), padding % (attention slots read that were masked: rows shorter than the widest
of their step; continuous only) and how many answers differ between the two modes (expected 0: greedy, and an
item's answer does not depend on its batch-mates).
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bench.running_set import Clock, arrivals, stagger_continuous, stagger_whole
from model.inference import UnderstandRequest, UniPicEngine, load_engine

QUESTIONS = ("what is this?", "describe every object in this picture, its colour, its size and where it is",
             "is there text?", "what is happening here, and what happened just before, in a few sentences?")


@dataclass
class Run:
    answers_per_s: float
    tokens_per_s: float
    p50: float
    p95: float
    busy: float
    padding: float
    texts: dict[str, str]


def workload(n: int, size: int, tokens: list[int], rng: random.Random) -> list[UnderstandRequest]:
    rs = np.random.default_rng(0)
    images = [Image.fromarray(rs.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(4)]
    return [UnderstandRequest(f"q{i}", images[i % 4], rng.choice(QUESTIONS), seed=i, size=size,
                              max_new_tokens=rng.choice(tokens)) for i in range(n)]


def summarize(engine: UniPicEngine, reqs: list[UnderstandRequest], at: dict[str, float], done: dict[str, float],
              clock: Clock, padding: float, texts: dict[str, str]) -> Run:
    lat = np.array([done[r.id] - at[r.id] for r in reqs])
    span = max(done.values()) - min(at.values())
    tokens = sum(len(engine.tokenizer.encode(t)) for t in texts.values())
    return Run(len(reqs) / span, tokens / span, float(np.percentile(lat, 50)), float(np.percentile(lat, 95)),
               clock.busy / span, padding, texts)


def run_whole(engine: UniPicEngine, reqs: list[UnderstandRequest], at: dict[str, float], max_items: int) -> Run:
    clock, done, results = stagger_whole(engine.understand, reqs, at, lambda ready: ready[:max_items])
    return summarize(engine, reqs, at, done, clock, 0.0, {k: r.text for k, r in results.items()})


def run_continuous(engine: UniPicEngine, reqs: list[UnderstandRequest], at: dict[str, float],
                   max_items: int) -> Run:
    ds = engine.open_set("understand", reqs[0].size)
    clock, done, finished = stagger_continuous(ds, reqs, at, max_items)
    padding = ds.stats.pad_slots / max(ds.stats.slots, 1)
    return summarize(engine, reqs, at, done, clock, padding, {k: f.text for k, f in finished.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tokens", default="8,32,96", help="token limits drawn per request")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-items", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = load_engine("tiny")
    tokens = [int(t) for t in args.tokens.split(",")]
    warm = workload(args.max_items, args.size, [max(tokens)], random.Random(1))
    engine.understand(warm[:1])
    t0 = time.perf_counter()
    engine.understand(warm)
    capacity = args.max_items / (time.perf_counter() - t0)  # answers/s of one full whole batch of the longest
    print(f"tiny model, CPU ({torch.get_num_threads()} threads), {args.size} px, {args.requests} requests, token "
          f"limits {tokens}, at most {args.max_items} items; whole batch of {args.max_items} x {max(tokens)} tokens: "
          f"{capacity:.2f} answers/s", flush=True)
    header = (f"{'load':<8} {'mode':<11} {'answers/s':>9} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'busy %':>7} "
              f"{'pad %':>6} {'differ':>6}")
    print(header)
    print("-" * len(header))
    for load, rate in (("backlog", 4 * capacity), ("spread", 0.7 * capacity)):
        rng = random.Random(args.seed)
        reqs = workload(args.requests, args.size, tokens, rng)
        at = dict(zip([r.id for r in reqs], arrivals(len(reqs), rate, rng), strict=True))
        whole = run_whole(engine, reqs, at, args.max_items)
        cont = run_continuous(engine, reqs, at, args.max_items)
        differ = sum(whole.texts[k] != cont.texts[k] for k in whole.texts)
        for mode, run in (("whole", whole), ("continuous", cont)):
            print(f"{load:<8} {mode:<11} {run.answers_per_s:9.2f} {run.tokens_per_s:9.1f} {run.p50:7.2f} "
                  f"{run.p95:7.2f} {100 * run.busy:7.1f} {100 * run.padding:6.1f} "
                  f"{differ if mode == 'continuous' else '':>6}", flush=True)


if __name__ == "__main__":
    main()
