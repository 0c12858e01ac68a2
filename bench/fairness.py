"""Fairness benchmark: tenant B's interactive latency while tenant A's bulk batch runs, against B alone, one run.

    python -m bench.fairness [--bulk 5000] [--b-jobs 30] [--interval 1.5] [--workers 1] [--compatible]
                             [--batching whole|continuous|both] [--companions auto,0,7] [--gateway]
                             [--b-kind generate|understand] [--same-key]

Starts the whole stack as separate processes (`bench.stack`: private Postgres and Redis, S3 server, API, model
workers with the tiny model, webhook worker, sweeper) and two API keys. Phase 1: B alone submits one job every
`--interval` seconds (after two warm-up jobs). Phase 2: A submits a batch of `--bulk` items; once the worker is
busy with it, A runs alone for as long as B's stream will take, then B submits the same stream again (A's
throughput during B's stream: A's images finished in that window), then A runs alone as long again (A's throughput
alone: the mean of the windows before and after B's, as A's rate moves over a run). B's latency is
`finished_at - created_at` as the API reports it. Prints p50/p99 for both phases and their ratio (targets with
continuous batching: p50 <= 1.3x, p99 <= 1.6x; A during B >= 80 % of A alone), then cancels what is left of A's
batch. B's jobs are 2 steps and A's 4 (not batch-compatible for whole-batch execution; continuous batching
shares a running set), or with `--compatible` the same size and steps as A's, or with `--b-kind understand`
16-token questions about a 64 px image (continuous: a token-level decode set beside A's image set). `--gateway`: the workers are
`unipic worker --gateway` workers that reach only the API (through its proxy), not Celery workers.
`--same-key`: the stream is A's own single jobs (priority 0) beside A's batch (priority -10): priority inside a key.
`--batching both` runs the same workload with whole-batch and then continuous workers and prints them side by side. Prints a table and a JSON
line per run; the JSON also splits B's run into its model calls, its encode + upload and the rest (`b_run_parts_s`),
and gives B's five slowest jobs in parts (`b_slowest`): a tail is found there before it is looked for in logs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import ROOT, Stack, StackConfig, wait_until

B_BODY = {"kind": "generate", "prompt": "a webhook-driven thumbnail", "width": 64, "height": 64, "steps": 2}
A_BODY = {"kind": "generate", "prompt": "bulk content", "width": 64, "height": 64, "steps": 4}
B_ASK_TOKENS = 16


def _b_body(compatible: bool, b_kind: str) -> dict[str, Any]:
    """B's job: a 2-step image, A's kind of image (`compatible`), or a question about a 64 px image."""
    if b_kind == "understand":
        import base64
        import io

        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return {"kind": "understand", "image": image, "question": "what is in this picture?", "size": 64,
                "max_new_tokens": B_ASK_TOKENS}
    return {**A_BODY, "prompt": B_BODY["prompt"]} if compatible else B_BODY


def _key(stack: Stack, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--name", name, "--json"],
                         env=stack.env(), cwd=ROOT, check=True, capture_output=True, text=True)
    return str(json.loads(out.stdout.strip().splitlines()[-1])["key"])


def _stream(client: httpx.Client, key: str, n: int, interval: float, body: dict[str, Any]) -> list[str]:
    """Submit `n` single jobs, one every `interval` seconds (the interactive tenant)."""
    ids = []
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(n):
        started = time.monotonic()
        r = client.post("/v1/jobs", json={**body, "seed": i}, headers=headers)
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


def _claim_order(pg_url: str, b_ids: list[str], batch_id: str, alone_ids: list[str]) -> dict[str, Any]:
    """How the claims interleaved: for each of B's jobs, how many of A's batches started while it was queued;
    and A's median batch time (a non-preemptive wait is at most one of those per busy worker). B's latency in
    two parts, alone and during A: queued (created -> claimed) and run (claimed -> finished, its result written)."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            b_rows, alone_rows = (conn.execute(sa.text(
                "select created_at, started_at, finished_at, coalesce(model_seconds, 0), "
                "coalesce(upload_seconds, 0) from jobs where id = any(:ids)"), {"ids": ids}).all()
                for ids in (b_ids, alone_ids))
            a_starts = [r[0] for r in conn.execute(sa.text(
                "select distinct started_at from jobs where batch_id = :b and started_at is not null"),
                {"b": batch_id})]
            a_batch = conn.execute(sa.text(
                "select percentile_cont(0.5) within group (order by model_seconds) from jobs "
                "where batch_id = :b and model_seconds is not null"), {"b": batch_id}).scalar()
    finally:
        engine.dispose()
    passed = [sum(1 for t in a_starts if created < t < started) for created, started, *_ in b_rows]
    waits = [(started - created).total_seconds() for created, started, *_ in b_rows]
    runs = [(finished - started).total_seconds() for _, started, finished, *_ in b_rows]
    alone_waits = [(started - created).total_seconds() for created, started, *_ in alone_rows]
    alone_runs = [(finished - started).total_seconds() for _, started, finished, *_ in alone_rows]
    return {"b_wait_to_start_s": _stats(waits), "b_start_to_finish_s": _stats(runs),
            "b_alone_wait_to_start_s": _stats(alone_waits), "b_alone_start_to_finish_s": _stats(alone_runs),
            "b_run_parts_s": _run_parts(b_rows), "b_alone_run_parts_s": _run_parts(alone_rows),
            "b_slowest": _slowest(b_rows, 5), "b_model_seconds_total": sum(float(r[3]) for r in b_rows),
            "a_batches_started_while_b_queued_max": max(passed, default=0),
            "a_batches_started_while_b_queued_mean": round(sum(passed) / max(1, len(passed)), 2),
            "a_batch_seconds_p50": round(float(a_batch or 0.0), 3)}


def _run_parts(rows: Sequence[Any]) -> dict[str, dict[str, float]]:
    """A job's run (claimed -> result written) in three parts: the model calls it took part in (its steps and its
    decode), its encode + upload, and the rest (paused steps, waiting for a decode or a finishing thread, the
    completion write)."""
    model = [float(r[3]) for r in rows]
    upload = [float(r[4]) for r in rows]
    rest = [(r[2] - r[1]).total_seconds() - float(r[3]) - float(r[4]) for r in rows]
    return {"model": _stats(model), "upload": _stats(upload), "rest": _stats(rest)}


def _slowest(rows: Sequence[Any], n: int) -> list[dict[str, float]]:
    """The `n` slowest jobs, each in parts: queued, model, upload, rest (seconds)."""
    ranked = sorted(rows, key=lambda r: (r[2] - r[0]).total_seconds(), reverse=True)[:n]
    return [{"total": round((r[2] - r[0]).total_seconds(), 3), "queued": round((r[1] - r[0]).total_seconds(), 3),
             "model": round(float(r[3]), 3), "upload": round(float(r[4]), 3),
             "rest": round((r[2] - r[1]).total_seconds() - float(r[3]) - float(r[4]), 3)} for r in ranked]


def _a_rate(pg_url: str, batch_id: str, start: datetime, end: datetime) -> float:
    """A's images finished per second in [start, end) (server timestamps)."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            done = conn.execute(sa.text(
                "select count(*) from jobs where batch_id = :b and status = 'succeeded' "
                "and finished_at >= :s and finished_at < :e"), {"b": batch_id, "s": start, "e": end}).scalar_one()
    finally:
        engine.dispose()
    return round(done / max(1e-9, (end - start).total_seconds()), 2)


def _box_busy() -> tuple[float, float]:
    """The machine's CPU time so far, busy and in all (`/proc/stat`, every core): B's stream alone keeps the box
    this busy, and on a CPU worker that work (API, database, claims, encode and upload, model) comes out of A's."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _now() -> datetime:
    return datetime.now(UTC)


def run(bulk: int, b_jobs: int, interval: float, workers: int, checkpoint: Path, root: Path,
        batching: str = "whole", compatible: bool = False, companions: str = "auto",
        gateway: bool = False, b_kind: str = "generate", same_key: bool = False) -> dict[str, Any]:
    env = {"UNIPIC_WORKER_BATCHING": batching, "UNIPIC_WORKER_STEP_COMPANIONS": companions}
    label = (batching if batching == "whole" else f"{batching}/{companions}") + ("/gw" if gateway else "")
    config = StackConfig(checkpoint=checkpoint, workers=0 if gateway else workers,
                         gateway_workers=workers if gateway else 0, lease_seconds=30.0, extra_env=env)
    stack = Stack(config, root / f"stack-{label.replace('/', '-')}")
    b_body = _b_body(compatible, b_kind)
    try:
        stack.start()
        key_a = _key(stack, "tenant-a")
        key_b = key_a if same_key else _key(stack, "tenant-b")  # A's own single jobs: priority 0, its batch's -10
        with httpx.Client(base_url=stack.api_url, timeout=120) as client:
            _latencies(client, key_b, _stream(client, key_b, 2, 0.0, b_body), 600)  # warm-up: first calls
            busy_from = _box_busy()
            alone_ids = _stream(client, key_b, b_jobs, interval, b_body)
            busy_to = _box_busy()
            alone = _latencies(client, key_b, alone_ids, 600)
            a_headers = {"Authorization": f"Bearer {key_a}"}
            r = client.post("/v1/batches", json=[{**A_BODY, "seed": i} for i in range(bulk)], headers=a_headers)
            r.raise_for_status()
            batch_id = r.json()["id"]
            wait_until(lambda: client.get(f"/v1/batches/{batch_id}", headers=a_headers).json()["counts"]["running"],
                       120, "A's bulk to start")
            a_alone_from = _now()
            time.sleep(b_jobs * interval)  # A alone, as long as B's stream will take
            a_alone_to = _now()
            contended_ids = _stream(client, key_b, b_jobs, interval, b_body)
            a_during_to = _now()
            # A alone again, as long: its rate moves over a run (the bulk's first minute, the box), so its share is
            # read against both windows around B's
            time.sleep(1.0)  # B's last jobs finish
            a_after_from = _now()
            time.sleep(b_jobs * interval)
            a_after_to = _now()
            contended = _latencies(client, key_b, contended_ids, 1800)
            counts = client.get(f"/v1/batches/{batch_id}", headers=a_headers).json()["counts"]
            client.post(f"/v1/batches/{batch_id}/cancel", headers=a_headers)
        order = _claim_order(stack.pg.url, contended_ids, batch_id, alone_ids)
        a_before = _a_rate(stack.pg.url, batch_id, a_alone_from, a_alone_to)
        a_after = _a_rate(stack.pg.url, batch_id, a_after_from, a_after_to)
        a_alone = round((a_before + a_after) / 2, 2)
        a_during = _a_rate(stack.pg.url, batch_id, a_alone_to, a_during_to)
        result = {"bulk": bulk, "b_jobs": b_jobs, "interval": interval, "workers": workers, "batching": label,
                  "gateway": gateway, "b_kind": b_kind, "same_key": same_key,
                  "compatible": compatible, "b_alone_s": _stats(alone), "b_during_bulk_s": _stats(contended),
                  "a_alone_images_per_s": a_alone, "a_alone_before_after_images_per_s": [a_before, a_after],
                  "a_during_b_images_per_s": a_during,
                  "a_counts_when_b_done": counts, **order}
        result["ratio_p50"] = round(result["b_during_bulk_s"]["p50"] / result["b_alone_s"]["p50"], 2)
        result["ratio_p99"] = round(result["b_during_bulk_s"]["p99"] / result["b_alone_s"]["p99"], 2)
        result["a_share"] = round(a_during / a_alone, 2) if a_alone else 0.0
        # the model time B's calls took in A's window (they run alone on a compute-bound CPU: each is time A's
        # items paused): A keeps at most 1 - this of its alone rate, whatever the scheduling
        window = (a_during_to - a_alone_to).total_seconds()
        b_model = order.pop("b_model_seconds_total")
        result["b_model_share"] = round(b_model / window, 3) if window > 0 else 0.0
        bound = 1.0 - result["b_model_share"]
        result["a_share_of_bound"] = round(result["a_share"] / bound, 2) if bound > 0 else 0.0
        total = busy_to[1] - busy_from[1]
        result["b_alone_box_busy"] = round((busy_to[0] - busy_from[0]) / total, 3) if total > 0 else 0.0
        return result
    finally:
        stack.close()


def table(runs: list[dict[str, Any]]) -> str:
    """The runs side by side: B's latency alone and during A's bulk, their ratio, A's throughput share."""
    head = (f"{'batching':16}{'B alone p50/p99 s':>20}{'B during A p50/p99 s':>23}{'ratio p50':>11}{'ratio p99':>11}"
            f"{'A alone img/s':>15}{'A during B':>12}{'A share':>9}{'B model':>9}{'A/bound':>9}{'B box':>7}"
            f"{'A queued past B max':>21}"
            f"{'B wait/run p50 s, alone -> during A':>37}")
    lines = [head]
    for r in runs:
        alone, during = r["b_alone_s"], r["b_during_bulk_s"]
        lines.append(f"{r['batching']:16}{alone['p50']:>10}/{alone['p99']:<9}{during['p50']:>12}/{during['p99']:<10}"
                     f"{r['ratio_p50']:>11}{r['ratio_p99']:>11}{r['a_alone_images_per_s']:>15}"
                     f"{r['a_during_b_images_per_s']:>12}{r['a_share']:>9}"
                     f"{r['b_model_share']:>9}{r['a_share_of_bound']:>9}{r['b_alone_box_busy']:>7}"
                     f"{r['a_batches_started_while_b_queued_max']:>21}"
                     f"{r['b_alone_wait_to_start_s']['p50']:>16}/{r['b_alone_start_to_finish_s']['p50']} -> "
                     f"{r['b_wait_to_start_s']['p50']}/{r['b_start_to_finish_s']['p50']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bulk", type=int, default=5000, help="items in tenant A's batch")
    ap.add_argument("--b-jobs", type=int, default=30, help="jobs in tenant B's stream (each phase)")
    ap.add_argument("--interval", type=float, default=1.5, help="seconds between B's submissions")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default="", help="checkpoint dir (default: write a tiny one)")
    ap.add_argument("--batching", choices=("continuous", "whole", "both"), default="both",
                    help="the workers' UNIPIC_WORKER_BATCHING (both: whole, then continuous, side by side)")
    ap.add_argument("--companions", default="auto",
                    help="continuous runs' UNIPIC_WORKER_STEP_COMPANIONS, comma-separated for one run each (auto,0,7)")
    ap.add_argument("--gateway", action="store_true", help="gateway workers (HTTPS to the API only), not Celery ones")
    ap.add_argument("--compatible", action="store_true",
                    help="B's jobs have A's size and steps (batch-compatible); default: B 2 steps, A 4")
    ap.add_argument("--b-kind", choices=("generate", "understand"), default="generate",
                    help=f"understand: B asks {B_ASK_TOKENS}-token questions about a 64 px image instead")
    ap.add_argument("--same-key", action="store_true",
                    help="B's stream is A's own single jobs (A's key, priority 0 against its batch's -10), not "
                         "another tenant's")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="unipic-fairness-"))
    if args.model:
        checkpoint = Path(args.model)
    else:
        from model.testing import write_tiny_checkpoint

        (root / "ckpt").mkdir(parents=True)
        checkpoint = write_tiny_checkpoint(root / "ckpt")
    modes = ("whole", "continuous") if args.batching == "both" else (args.batching,)
    runs = []
    for mode, companions in [(m, c) for m in modes for c in (args.companions.split(",") if m != "whole" else ["auto"])]:
        out = run(args.bulk, args.b_jobs, args.interval, args.workers, checkpoint, root, mode, args.compatible,
                  companions, args.gateway, args.b_kind, args.same_key)
        print(json.dumps(out), flush=True)
        runs.append(out)
    b = _b_body(args.compatible, args.b_kind)
    what = (f"questions of {b['max_new_tokens']} tokens about a 64 px image" if args.b_kind == "understand"
            else f"jobs of {b['width']} px, {b['steps']} steps")
    who = "tenant A's own single jobs" if args.same_key else "tenant B"
    print(f"{who}: {args.b_jobs} {what}, one every {args.interval}s; "
          f"tenant A: {args.bulk}-item batch of {A_BODY['width']} px, {A_BODY['steps']} steps; "
          f"{args.workers} {'gateway' if args.gateway else 'Celery'} worker(s); "
          f"{'batch-compatible' if args.compatible else 'not batch-compatible'}")
    print(table(runs))
    print("targets (continuous): ratio p50 <= 1.3, p99 <= 1.6; A share >= 0.8")
    print("B model: the model time of B's calls over A's window (whole: of the batches B's jobs ran in); A/bound: "
          "A share / (1 - B model), what A kept of the model time B's own calls left it; B box: the machine's CPU "
          "busy (all cores) while B's stream ran alone: on a CPU worker, about what B's stream takes from A")


if __name__ == "__main__":
    main()
