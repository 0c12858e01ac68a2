"""API benchmark: (a) a 10,000-item batch accepted, (b) single-job submit throughput, against a real server.

Runs the API under uvicorn (as production does: `--factory api.app:create_app_from_env`) on local Postgres
(a private schema in database `test`, dropped afterwards) and Redis (db 0; only its two queues are cleared),
with a local object store, and checks that every accepted job got exactly one broker message. The load generator keeps a fixed
number of concurrent keep-alive connections, over plain asyncio sockets (default; it costs the shared machine
little, so the figures are the server's) or httpx.AsyncClient (`--client httpx`, ~1-6 ms of CPU per request).
Server and load-generator CPU per submit are reported, so runs on a busy machine can be read fairly.

    python -m bench.api [--batch-items 10000] [--submits 3000] [--concurrency 32] [--workers 2] [--client raw]

Targets: batch accepted in < 5 s; >= 300 submits/s. Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# db 0: test sessions take dbs 1-15 (tests/conftest.py); only the two queues below are touched, never flushed
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH_QUEUE = "unipic.generate.l"  # 1024 px items
SUBMIT_QUEUE = "unipic.generate.s"  # 256 px items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message_job_ids(redis: Any, queue: str) -> list[str]:
    ids = []
    for raw in redis.lrange(queue, 0, -1):
        args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
        ids.append(args[0])
    return ids


class Stack:
    """A private schema + Redis db + uvicorn server for the run."""

    def __init__(self, workers: int) -> None:
        self.schema = f"bench_{secrets.token_hex(4)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="unipic-bench-api-"))
        self.port = free_port()
        self.workers = workers
        self.env = {
            **os.environ, "UNIPIC_DATABASE_URL": PG, "UNIPIC_DB_SCHEMA": self.schema, "UNIPIC_BROKER_URL": REDIS,
            "UNIPIC_REDIS_URL": REDIS, "UNIPIC_DATA_DIR": str(self.tmp), "UNIPIC_MAX_QUEUE_DEPTH": "10000000",
            "UNIPIC_MAX_ACTIVE_JOBS_PER_KEY": "10000000", "UNIPIC_RATE_LIMIT_PER_MINUTE": "10000000",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        import psycopg
        import redis

        from storage.db import make_engine, make_session_factory
        from storage.keys import KeyStore
        from storage.migrate import upgrade
        from storage.settings import load_settings

        with psycopg.connect(PG.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        settings = load_settings(database_url=PG, db_schema=self.schema, data_dir=self.tmp)
        upgrade(settings)
        engine = make_engine(settings)
        _, self.key = KeyStore(make_session_factory(engine)).create("bench")
        self.engine = engine
        self.redis = redis.Redis.from_url(REDIS)
        self.redis.delete(BATCH_QUEUE, SUBMIT_QUEUE)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app_from_env", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers), "--no-access-log", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the API server did not become ready")
            time.sleep(0.2)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def __exit__(self, *exc: object) -> None:
        import psycopg

        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.engine.dispose()
        self.redis.delete(BATCH_QUEUE, SUBMIT_QUEUE)
        with psycopg.connect(PG.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def bench_batch(stack: Stack, items: int) -> dict[str, Any]:
    """POST one JSONL batch of `items` generate requests; time until 202; check each job enqueued once."""
    lines = [json.dumps({"kind": "generate", "prompt": f"a lighthouse at dusk, variation {i}", "width": 1024,
                         "height": 1024, "steps": 16, "custom_id": f"b{i}"}) for i in range(items)]
    body = ("\n".join(lines)).encode()
    assert stack.proc is not None
    cpu_before = server_cpu_seconds(stack.proc.pid)
    started = time.perf_counter()
    r = httpx.post(f"{stack.url}/v1/batches", content=body, timeout=120,
                   headers={**stack.headers, "Content-Type": "application/x-ndjson"})
    seconds = time.perf_counter() - started
    server_cpu = server_cpu_seconds(stack.proc.pid) - cpu_before
    r.raise_for_status()
    batch = r.json()
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        job_ids = {row[0] for row in conn.execute(text("SELECT id FROM jobs WHERE batch_id = :b"),
                                                  {"b": batch["id"]})}
    sent = Counter(message_job_ids(stack.redis, BATCH_QUEUE))
    exactly_once = len(job_ids) == items and set(sent) == job_ids and set(sent.values()) == {1}
    return {"items": items, "accepted_seconds": round(seconds, 3), "server_cpu_seconds": round(server_cpu, 2),
            "body_bytes": len(body),
            "enqueued_exactly_once": exactly_once, "target_seconds": 5.0, "met": seconds < 5.0 and exactly_once}


async def _submit_load(stack: Stack, total: int, concurrency: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for i in counter:
                body = {"kind": "generate", "prompt": f"a small red boat {i}", "width": 256, "height": 256,
                        "steps": 8}
                t0 = time.perf_counter()
                r = await client.post("/v1/jobs", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 202:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:200]}")
                ids.append(r.json()["id"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, ids, elapsed


async def _raw_load(stack: Stack, total: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """The same load over plain asyncio sockets (HTTP/1.1 keep-alive): a load generator that costs the
    machine a few tens of microseconds per request, so the server gets the CPU (httpx costs milliseconds)."""
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(total))
    auth = stack.headers["Authorization"]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        try:
            for i in counter:
                body = json.dumps({"kind": "generate", "prompt": f"a small red boat {i}", "width": 256,
                                   "height": 256, "steps": 8}).encode()
                head = (f"POST /v1/jobs HTTP/1.1\r\nHost: bench\r\nAuthorization: {auth}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                await writer.drain()
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if status != 202:
                    raise RuntimeError(f"submit answered {status}: {payload[:200]!r}")
                ids.append(json.loads(payload)["id"])
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, ids, time.perf_counter() - started


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its children so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def bench_submits(stack: Stack, total: int, concurrency: int, client: str) -> dict[str, Any]:
    """`total` single-job submissions over `concurrency` connections: rate and latency percentiles."""
    load = _raw_load if client == "raw" else _submit_load
    asyncio.run(load(stack, min(200, total), concurrency))  # warm up connections and caches
    stack.redis.delete(SUBMIT_QUEUE)
    assert stack.proc is not None
    cpu_before = server_cpu_seconds(stack.proc.pid)
    client_before = time.process_time()
    latencies, ids, elapsed = asyncio.run(load(stack, total, concurrency))
    server_cpu = server_cpu_seconds(stack.proc.pid) - cpu_before
    client_cpu = time.process_time() - client_before
    latencies.sort()
    sent = Counter(message_job_ids(stack.redis, SUBMIT_QUEUE))
    rate = total / elapsed
    return {
        "submits": total, "concurrency": concurrency, "client": client, "seconds": round(elapsed, 2),
        "per_second": round(rate, 1), "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "enqueued_exactly_once": set(sent) == set(ids) and set(sent.values()) == {1},
        "messages": len(sent), "duplicates": sum(1 for n in sent.values() if n > 1),
        "missing": len(set(ids) - set(sent)), "unexpected": len(set(sent) - set(ids)),
        "server_cpu_ms_per_submit": round(server_cpu / total * 1000, 2),
        "load_generator_cpu_ms_per_submit": round(client_cpu / total * 1000, 2),
        "target_per_second": 300, "met": rate >= 300,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-items", type=int, default=10_000)
    parser.add_argument("--submits", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load generator: plain asyncio sockets (cheap) or httpx.AsyncClient")
    args = parser.parse_args()
    with Stack(args.workers) as stack:
        result = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0],
                  "uvicorn_workers": args.workers,
                  "batch": bench_batch(stack, args.batch_items),
                  "submit": bench_submits(stack, args.submits, args.concurrency, args.client)}
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
