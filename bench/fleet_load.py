"""`bench.fleet load`: simulated gateway workers with work to do, against one or two API processes.

- claim ceiling: `--claimers` workers claim one job at a time with no wait, from a backlog that outlasts the
  window, against one API process and then two (same Postgres): claims/s, the claim's latency (p50/p99), and the
  API's and Postgres's CPU per claim;
- claim-to-start: `--waiters` workers long-poll an empty queue; jobs are committed one at a time (`--rate`/s) and
  each is timed from just before its commit to the moment a worker holds it (p50/p99/max): the wake-up path;
- end to end: `--workers` workers and a backlog of `--backlog` jobs (generate 256x256, 8 steps). Each worker
  claims up to 4 jobs (long-poll), "runs" them with a fake engine (`--step-ms` per step for the batch), PUTs each
  result (a real 256x256 PNG, which `complete` decodes) to its presigned URL, completes each, and beats every
  10 s. Jobs/s from the first claim to the last completion (or `--limit` seconds), and the cost per job;
- projection: the per-worker idle costs (from `--idle-json`, written by `bench.fleet idle --json`) and the
  per-job costs above, multiplied out to 10,000 workers, on paper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import HEARTBEAT_SECONDS, Http, Stack, Usage, beat_forever, claim_body, register

SIZE = 256
STEPS = 8
FLEET = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--claimers", type=int, default=32, help="concurrent claimers for the claim ceiling")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per claim-ceiling run")
    parser.add_argument("--waiters", type=int, default=100, help="idle workers waiting for the claim-to-start run")
    parser.add_argument("--wake-jobs", type=int, default=100, help="jobs committed one by one to the waiters")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs/s committed to the waiters")
    parser.add_argument("--workers", type=int, default=200, help="workers of the end-to-end run")
    parser.add_argument("--backlog", type=int, default=10_000, help="jobs queued before the end-to-end run")
    parser.add_argument("--step-ms", type=float, default=25.0, help="the fake engine's time per step (per batch)")
    parser.add_argument("--limit", type=float, default=300.0, help="end-to-end run stops after this many seconds")
    parser.add_argument("--owners", type=int, default=1, help="API keys the jobs belong to (round robin): one "
                        "key's backlog makes every claim charge the same fair-share row")
    parser.add_argument("--parts", default="ceiling,wake,e2e", help="which runs (comma list)")
    parser.add_argument("--idle-json", default="", help="`bench.fleet idle --json` output, for the projection")


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_jobs(stack: Stack, count: int) -> list[str]:
    """`count` queued generate jobs (one transaction per 500) of the stack's owners in turn, as the API would
    store them; their ids."""
    from storage.jobs.store import JobStore
    from storage.records import NewJob
    from storage.routing import queue_for

    store, ids = JobStore(stack.sessions), []
    for start in range(0, count, 500):
        news: list[NewJob] = []
        for _ in range(min(500, count - start)):
            seed = random.randrange(2**31)
            params = {"width": SIZE, "height": SIZE, "num_images": 1, "steps": STEPS, "guidance_scale": 3.0,
                      "guidance_schedule": "constant", "temperature": 1.0, "seed": seed, "output_format": "png",
                      "prompt": "a red cube", "negative_prompt": None}
            owner = stack.owner_ids[(start + len(news)) % len(stack.owner_ids)]
            news.append(NewJob(owner_id=owner, kind="generate", params=params,
                               compat_key=f"generate:{SIZE}:{STEPS}:3.0:constant", queue=queue_for("generate", SIZE),
                               pixels=SIZE * SIZE, seed=seed))
        ids += [j.id for j in store.create_many(news)[1]]
    return ids


# ---- claim ceiling ------------------------------------------------------------------------------------------
@dataclass
class CeilingRun:
    apis: int
    claims: int
    empty: int
    usage: Usage
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.claims / self.usage.seconds


async def claim_ceiling(stack: Stack, apis: int, args: argparse.Namespace) -> CeilingRun:
    await asyncio.to_thread(stack.clear_jobs)
    urls = await asyncio.to_thread(stack.start_apis, apis)
    await asyncio.to_thread(make_jobs, stack, int(max(3000, 600 * apis * (args.window + 5))))
    counts, latencies, measuring = {"claims": 0, "empty": 0}, [], [False]

    async def claimer(i: int) -> None:
        http = Http(urls[i % len(urls)], stack.token)
        try:
            while True:
                started = time.monotonic()
                status, body = await http.post("/v1/worker/claim", claim_body(f"ceiling-{i}", 0, True, 1))
                if measuring[0]:
                    got = status == 200 and bool(body["jobs"])
                    counts["claims" if got else "empty"] += 1
                    if got:
                        latencies.append(time.monotonic() - started)
        finally:
            http.close()

    tasks = [asyncio.create_task(claimer(i)) for i in range(args.claimers)]
    try:
        await asyncio.sleep(3)
        measuring[0] = True
        usage = await stack.usage(args.window)
        measuring[0] = False
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(stack.stop_apis)
    return CeilingRun(apis, counts["claims"], counts["empty"], usage, latencies)


# ---- claim-to-start -----------------------------------------------------------------------------------------
async def claim_to_start(stack: Stack, args: argparse.Namespace) -> list[float]:
    """Seconds from just before each job's commit to a waiting worker holding it (inf: never taken)."""
    await asyncio.to_thread(stack.clear_jobs)
    urls = await asyncio.to_thread(stack.start_apis, 1)
    committed: dict[str, float] = {}
    held: dict[str, float] = {}

    async def waiter(i: int) -> None:
        http = Http(urls[0], stack.token)
        try:
            while True:
                status, body = await http.post("/v1/worker/claim", claim_body(f"waiter-{i}", 20, True, 1))
                now = time.monotonic()
                for job in body["jobs"] if status == 200 else []:
                    held[job["job_id"]] = now
        finally:
            http.close()

    def commit_one() -> None:  # one job, timed from just before its transaction
        started = time.monotonic()
        [job_id] = make_jobs(stack, 1)
        committed[job_id] = started

    tasks = [asyncio.create_task(waiter(i)) for i in range(args.waiters)]
    try:
        await asyncio.sleep(5)  # every waiter has looked once and waits
        for _ in range(args.wake_jobs):
            await asyncio.to_thread(commit_one)
            await asyncio.sleep(1 / args.rate)
        deadline = time.monotonic() + 30
        while len(held) < len(committed) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(stack.stop_apis)
    return [held[j] - t for j, t in committed.items() if j in held] + \
        [float("inf")] * sum(j not in held for j in committed)


# ---- end to end ---------------------------------------------------------------------------------------------
@dataclass
class EndToEnd:
    workers: int
    backlog: int
    done: int
    usage: Usage
    errors: int
    claim_latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.usage.seconds


async def end_to_end(stack: Stack, args: argparse.Namespace) -> EndToEnd:
    await asyncio.to_thread(stack.clear_jobs)
    urls = await asyncio.to_thread(stack.start_apis, 1)
    await asyncio.to_thread(make_jobs, stack, args.backlog)
    png = _png()
    digest = hashlib.sha256(png).hexdigest()
    names = [f"e2e-{i}" for i in range(args.workers)]
    await register(urls, stack.token, names)
    counts = {"done": 0, "errors": 0, "answered": 0}
    latencies: list[float] = []
    finished = asyncio.Event()

    async def work(http: Http, name: str) -> None:
        while not finished.is_set():
            try:
                started = time.monotonic()
                status, body = await http.post("/v1/worker/claim", claim_body(name, 20, True, 4))
                if status != 200:
                    counts["errors"] += 1
                    continue
                latencies.append(time.monotonic() - started)
                if not body["jobs"]:
                    continue
                await asyncio.sleep(STEPS * args.step_ms / 1000)  # the fake engine runs the batch
                for job in body["jobs"]:
                    objects = []
                    for key, url in job["result_urls"].items():
                        if await http.put(url, png) != 200:
                            counts["errors"] += 1
                        objects.append({"key": key, "size": len(png), "sha256": digest})
                    status, _ = await http.post("/v1/worker/complete", {
                        "worker": name, "job_id": job["job_id"], "lease_token": job["lease_token"],
                        "objects": objects})
                    if status == 200:
                        counts["done"] += 1
                        if counts["done"] >= args.backlog:
                            finished.set()
                    else:
                        counts["errors"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, KeyError):
                counts["errors"] += 1
                await asyncio.sleep(1)

    conns = [(Http(urls[0], stack.token), Http(urls[0], stack.token)) for _ in names]
    mark = await asyncio.to_thread(stack.mark)
    tasks = [asyncio.create_task(work(a, n)) for (a, _), n in zip(conns, names, strict=True)]
    tasks += [asyncio.create_task(beat_forever(b, n, counts)) for (_, b), n in zip(conns, names, strict=True)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), args.limit)
        usage = await asyncio.to_thread(stack.since, mark)
    finally:
        finished.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a, b in conns:
            a.close()
            b.close()
        await asyncio.to_thread(stack.stop_apis)
    return EndToEnd(args.workers, args.backlog, counts["done"], usage, counts["errors"], latencies)


# ---- tables -------------------------------------------------------------------------------------------------
def ceiling_table(runs: list[CeilingRun], claimers: int, owners: int) -> str:
    rows = [f"| API processes | claims/s ({claimers} claimers, 1 job each, {owners} owner keys) | claim p50 | claim p99 | API CPU | "
            "Postgres CPU | Postgres tx/s | tx per claim | API CPU ms per claim | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        u = r.usage
        rows.append(f"| {r.apis} | {r.rate:.0f}{' (ran dry)' if r.empty else ''} | {_ms(r.latencies, 0.5):.1f} ms | "
                    f"{_ms(r.latencies, 0.99):.1f} ms | {u.api_cpu:.0f} % | {u.pg_cpu:.0f} % | {u.tps:.0f} | "
                    f"{u.tps / r.rate:.1f} | {10 * u.api_cpu / r.rate:.2f} | {u.load:.1f} |")
    return "\n".join(rows)


def wake_table(latencies: list[float], args: argparse.Namespace) -> str:
    lost = sum(x == float("inf") for x in latencies)
    return "\n".join([
        "| waiting workers | jobs committed | p50 | p99 | max | not taken in 30 s |", "|---|---|---|---|---|---|",
        f"| {args.waiters} | {len(latencies)} at {args.rate:.0f}/s | {_ms(latencies, 0.5):.1f} ms | "
        f"{_ms(latencies, 0.99):.1f} ms | {1000 * max((x for x in latencies if x != float('inf')), default=0):.1f} ms"
        f" | {lost} |"])


def e2e_table(run: EndToEnd, args: argparse.Namespace) -> str:
    u = run.usage
    return "\n".join([
        "| workers | backlog | done | seconds | jobs/s | claim p99 (long-poll) | API CPU | Postgres CPU | "
        "Postgres tx/s | tx per job | API CPU ms per job | Postgres CPU ms per job | errors | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {run.workers} | {run.backlog} | {run.done} | {u.seconds:.0f} | {run.rate:.0f} | "
        f"{_ms(run.claim_latencies, 0.99):.0f} ms | {u.api_cpu:.0f} % | {u.pg_cpu:.0f} % | {u.tps:.0f} | "
        f"{u.tps / max(run.rate, 1e-9):.1f} | {10 * u.api_cpu / max(run.rate, 1e-9):.1f} | "
        f"{10 * u.pg_cpu / max(run.rate, 1e-9):.1f} | {run.errors} | {u.load:.1f} |",
        f"(fake engine: {STEPS} steps x {args.step_ms:.0f} ms per batch of up to 4; "
        f"a heartbeat every {HEARTBEAT_SECONDS:.0f} s per worker)"])


def projection(idle: dict[str, float] | None, ceiling: list[CeilingRun], run: EndToEnd) -> str:
    """10,000 workers on paper: idle cost per worker times 10,000; busy cost per job times the jobs/s such a fleet
    asks for at a few job lengths."""
    rows = ["| 10,000 workers | Postgres tx/s | API CPU (cores) | API processes at 70 % | API memory |",
            "|---|---|---|---|---|"]
    if idle:
        tps = idle["base_tps"] + idle["tps_per_worker"] * FLEET
        cores = idle["cpu_per_worker"] * FLEET / 100
        rows.append(f"| idle | {tps:.0f} | {cores:.1f} | {max(1, -(-cores // 0.7)):.0f} | "
                    f"{idle['rss_mb_per_worker'] * FLEET / 1024:.1f} GB |")
    per_job_cpu = run.usage.api_cpu / 100 / max(run.rate, 1e-9)  # core-seconds per job
    per_job_tx = run.usage.tps / max(run.rate, 1e-9)
    for job_seconds in (60.0, 10.0, 2.0):
        jobs = FLEET / job_seconds  # every worker busy, one job per `job_seconds`
        cores = jobs * per_job_cpu
        rows.append(f"| busy, a job per {job_seconds:.0f} s each ({jobs:.0f} jobs/s) | {jobs * per_job_tx:.0f} | "
                    f"{cores:.1f} | {max(1, -(-cores // 0.7)):.0f} | - |")
    best = max((r.rate / r.apis for r in ceiling), default=0.0)
    rows.append(f"(claims: {best:.0f}/s per API process measured; per job: {per_job_tx:.1f} Postgres tx and "
                f"{1000 * per_job_cpu:.1f} ms of API CPU, batches of up to 4)")
    return "\n".join(rows)


def idle_slopes(path: str) -> dict[str, float] | None:
    """Per-worker idle costs from `bench.fleet idle --json`: the slope between the smallest and largest N."""
    if not path:
        return None
    runs = sorted((r for r in json.loads(Path(path).read_text()) if r["tree"] == "after"), key=lambda r: r["n"])
    low, high = runs[0], runs[-1]
    span = high["n"] - low["n"]
    return {"base_tps": low["tps"] - low["n"] * (high["tps"] - low["tps"]) / span,
            "tps_per_worker": max(0.0, (high["tps"] - low["tps"]) / span),
            "cpu_per_worker": max(0.0, (high["api_cpu"] - low["api_cpu"]) / span),
            "rss_mb_per_worker": max(0.0, (high["rss_mb"] - low["rss_mb"]) / span)}


async def load(args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    stack = Stack()
    await asyncio.to_thread(stack.start, args.owners)
    tables: list[str] = []
    summary: dict[str, Any] = {"owners": args.owners}
    try:
        if "ceiling" in parts:
            ceiling = [await claim_ceiling(stack, apis, args) for apis in (1, 2)]
            tables.append(ceiling_table(ceiling, args.claimers, args.owners))
            summary["claims_per_s"] = [r.rate for r in ceiling]
            print(tables[-1], flush=True)
        if "wake" in parts:
            wakes = await claim_to_start(stack, args)
            tables.append(wake_table(wakes, args))
            summary["claim_to_start_p99_ms"] = _ms(wakes, 0.99)
            print(tables[-1], flush=True)
        if "e2e" in parts:
            run = await end_to_end(stack, args)
            tables.append(e2e_table(run, args))
            summary.update(jobs_per_s=run.rate, tx_per_job=run.usage.tps / max(run.rate, 1e-9))
            print(tables[-1], flush=True)
            tables.append(projection(idle_slopes(args.idle_json), ceiling if "ceiling" in parts else [], run))
    finally:
        stack.close()
    print()
    print("\n\n".join(tables))
    print(json.dumps(summary))
