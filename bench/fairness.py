"""Fairness benchmark: tenant B's interactive latency while tenant A's bulk batch runs, against B alone, one run.

    python -m bench.fairness [--bulk 5000] [--b-jobs 30] [--interval 1.5] [--workers 1]

Starts the whole stack as separate processes (`bench.stack`: private Postgres and Redis, S3 server, API, model
workers with the tiny model, webhook worker, sweeper) and two API keys. Phase 1: B alone submits one job every
`--interval` seconds (after two warm-up jobs). Phase 2: A submits a batch of `--bulk` items; once the worker is busy with it, B submits the
same stream again. B's latency is `finished_at - created_at` as the API reports it. Prints p50/p99 for both
phases and their ratio (target <= 2x), then cancels what is left of A's batch. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import ROOT, Stack, StackConfig, wait_until

B_BODY = {"kind": "generate", "prompt": "a webhook-driven thumbnail", "width": 64, "height": 64, "steps": 2}
A_BODY = {"kind": "generate", "prompt": "bulk content", "width": 64, "height": 64, "steps": 4}


def _key(stack: Stack, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--name", name, "--json"],
                         env=stack.env(), cwd=ROOT, check=True, capture_output=True, text=True)
    return str(json.loads(out.stdout.strip().splitlines()[-1])["key"])


def _stream(client: httpx.Client, key: str, n: int, interval: float) -> list[str]:
    """Submit `n` single jobs, one every `interval` seconds (the interactive tenant)."""
    ids = []
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(n):
        started = time.monotonic()
        r = client.post("/v1/jobs", json={**B_BODY, "seed": i}, headers=headers)
        r.raise_for_status()
        ids.append(r.json()["id"])
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return ids


def _latencies(client: httpx.Client, key: str, ids: list[str], timeout: float) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}

    def all_done() -> list[dict[str, Any]] | None:
        jobs = [client.get(f"/v1/jobs/{i}", headers=headers).json() for i in ids]
        return jobs if all(j["finished_at"] for j in jobs) else None

    jobs = wait_until(all_done, timeout, "B's jobs to finish", interval=1.0)
    return [(datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"])).total_seconds()
            for j in jobs]


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3), "n": len(ordered)}


def _claim_order(pg_url: str, b_ids: list[str], batch_id: str) -> dict[str, Any]:
    """How the claims interleaved: for each of B's jobs, how many of A's batches started while it was queued;
    and A's median batch time (a non-preemptive wait is at most one of those per busy worker)."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            b_rows = conn.execute(sa.text("select created_at, started_at from jobs where id = any(:ids)"),
                                  {"ids": b_ids}).all()
            a_starts = [r[0] for r in conn.execute(sa.text(
                "select distinct started_at from jobs where batch_id = :b and started_at is not null"),
                {"b": batch_id})]
            a_batch = conn.execute(sa.text(
                "select percentile_cont(0.5) within group (order by model_seconds) from jobs "
                "where batch_id = :b and model_seconds is not null"), {"b": batch_id}).scalar()
    finally:
        engine.dispose()
    passed = [sum(1 for t in a_starts if created < t < started) for created, started in b_rows]
    return {"a_batches_started_while_b_queued_max": max(passed, default=0),
            "a_batches_started_while_b_queued_mean": round(sum(passed) / max(1, len(passed)), 2),
            "a_batch_seconds_p50": round(float(a_batch or 0.0), 3)}


def run(bulk: int, b_jobs: int, interval: float, workers: int, checkpoint: Path, root: Path,
        batching: str = "whole") -> dict[str, Any]:
    stack = Stack(StackConfig(checkpoint=checkpoint, workers=workers, lease_seconds=30.0,
                              extra_env={"UNIPIC_WORKER_BATCHING": batching}), root / "stack")
    try:
        stack.start()
        key_a, key_b = _key(stack, "tenant-a"), _key(stack, "tenant-b")
        with httpx.Client(base_url=stack.api_url, timeout=120) as client:
            _latencies(client, key_b, _stream(client, key_b, 2, 0.0), 600)  # warm-up: the worker's first calls
            alone = _latencies(client, key_b, _stream(client, key_b, b_jobs, interval), 600)
            a_headers = {"Authorization": f"Bearer {key_a}"}
            r = client.post("/v1/batches", json=[{**A_BODY, "seed": i} for i in range(bulk)], headers=a_headers)
            r.raise_for_status()
            batch_id = r.json()["id"]
            wait_until(lambda: client.get(f"/v1/batches/{batch_id}", headers=a_headers).json()["counts"]["running"],
                       120, "A's bulk to start")
            contended_ids = _stream(client, key_b, b_jobs, interval)
            contended = _latencies(client, key_b, contended_ids, 1800)
            counts = client.get(f"/v1/batches/{batch_id}", headers=a_headers).json()["counts"]
            client.post(f"/v1/batches/{batch_id}/cancel", headers=a_headers)
        order = _claim_order(stack.pg.url, contended_ids, batch_id)
        result = {"bulk": bulk, "b_jobs": b_jobs, "interval": interval, "workers": workers, "batching": batching,
                  "b_alone_s": _stats(alone), "b_during_bulk_s": _stats(contended),
                  "a_counts_when_b_done": counts, **order}
        result["ratio_p50"] = round(result["b_during_bulk_s"]["p50"] / result["b_alone_s"]["p50"], 2)
        result["ratio_p99"] = round(result["b_during_bulk_s"]["p99"] / result["b_alone_s"]["p99"], 2)
        return result
    finally:
        stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bulk", type=int, default=5000, help="items in tenant A's batch")
    ap.add_argument("--b-jobs", type=int, default=30, help="jobs in tenant B's stream (each phase)")
    ap.add_argument("--interval", type=float, default=1.5, help="seconds between B's submissions")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default="", help="checkpoint dir (default: write a tiny one)")
    ap.add_argument("--batching", choices=("continuous", "whole"), default="whole",
                    help="the workers' UNIPIC_WORKER_BATCHING")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="unipic-fairness-"))
    if args.model:
        checkpoint = Path(args.model)
    else:
        from model.testing import write_tiny_checkpoint

        (root / "ckpt").mkdir(parents=True)
        checkpoint = write_tiny_checkpoint(root / "ckpt")
    out = run(args.bulk, args.b_jobs, args.interval, args.workers, checkpoint, root, args.batching)
    print(f"tenant B: {args.b_jobs} jobs, one every {args.interval}s; tenant A: {args.bulk}-item batch; "
          f"{args.workers} worker(s), {args.batching} batching")
    print(f"{'':28}{'p50 s':>10}{'p99 s':>10}")
    for label, key in (("B alone", "b_alone_s"), ("B during A's bulk", "b_during_bulk_s")):
        print(f"{label:28}{out[key]['p50']:>10}{out[key]['p99']:>10}")
    print(f"{'ratio (target <= 2x)':28}{out['ratio_p50']:>10}{out['ratio_p99']:>10}")
    print(f"A's batch when B's stream finished: {out['a_counts_when_b_done']}")
    print(f"A's batches that started while one of B's jobs was queued: max "
          f"{out['a_batches_started_while_b_queued_max']}, mean {out['a_batches_started_while_b_queued_mean']}; "
          f"A's batch time p50 {out['a_batch_seconds_p50']} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
