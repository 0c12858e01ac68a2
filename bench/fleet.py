"""A fleet of simulated gateway workers against the real API, Postgres and Redis (issue 24, item 3). Never in CI.

    .venv/bin/python -m bench.fleet idle --sizes 0,100,1000 [--before-tree DIR]
    .venv/bin/python -m bench.fleet load [--workers 200 --backlog 10000 --step-ms 25]

A simulated worker is a few asyncio tasks in this process speaking the real HTTP protocol over its own keep-alive
connections (`Http`: a minimal HTTP/1.1 client, so that one process can play thousands of workers; httpx spends
about a millisecond per request, which on a small machine throttled the fleet instead of the API). The API runs
as `unipic api` (push events, a private Postgres and Redis, local objects behind signed links), one or two
processes; `--before-tree DIR` also runs every idle size against the API of another checkout (e.g.
`git archive <commit> | tar -x -C DIR`), in the same run, so the table shows before and after side by side.

idle: N workers, nothing queued. Each holds a long-polling `claim` (`wait_seconds` 20, a fresh `claim_id` per claim
with `first_try`, as `workers.transport.gateway_client` sends; the before tree gets no `first_try`, which it
does not know) and sends a `heartbeat` every 10 s, phases spread at random. After `--warmup` seconds it measures
`--window` seconds: Postgres transactions/s (pg_stat_database xact_commit), the API's CPU (% of one core) and
memory, and how many requests the fleet made against how many it should have (the fleet keeping up).

load (bench.fleet_load): the claim ceiling of one API process and of two, claim latency and the wake-up latency
of a job committed while workers wait (claim-to-start), jobs/s end to end with a backlog, and what each costs
per worker and per job, projected on paper to 10,000 workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.events import api_pids, cpu_seconds
from bench.stack import ROOT, PrivatePostgres, PrivateRedis, free_port, wait_until

WAIT_SECONDS = 20.0
HEARTBEAT_SECONDS = 10.0


class Http:
    """One keep-alive HTTP/1.1 connection of a simulated worker: JSON in, JSON out, reconnecting when the server
    closed it while idle (uvicorn's keep-alive is 5 s, a heartbeat comes every 10 s)."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = f"Authorization: Bearer {token}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        status, body = await self.request("POST", path, json.dumps(payload).encode(), "application/json")
        return status, json.loads(body) if body else None

    async def put(self, url: str, data: bytes) -> int:
        parts = urlsplit(url)
        return (await self.request("PUT", f"{parts.path}?{parts.query}", data, "application/octet-stream"))[0]

    async def request(self, method: str, target: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.auth}"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        if self._reader is None or self._writer is None or self._reader.at_eof():
            self.close()
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        try:
            self._writer.write(head + body)
            await self._writer.drain()
            return await self._answer(self._reader)
        except BaseException:
            self.close()
            raise

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        body = await reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class Usage:
    """What a window cost: Postgres transactions/s, the API's and Postgres's CPU (% of one core)."""

    seconds: float
    tps: float
    api_cpu: float
    pg_cpu: float
    api_rss_mb: float
    load: float  # the machine's 1-minute load average at the end (2 cores here, shared: what else ran)


class Stack:
    """A private Postgres and Redis, the schema migrated, a worker token and an API key; API processes on demand."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="unipic-fleet-"))
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis(self.root / "redis")
        self.apis: list[tuple[subprocess.Popen[bytes], str]] = []

    def env(self, public_url: str = "") -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "UNIPIC_DATABASE_URL": self.pg.url, "UNIPIC_BROKER_URL": self.redis.url, "UNIPIC_REDIS_URL": self.redis.url,
            "UNIPIC_STORAGE_URL": f"file://{self.root / 'objects'}", "UNIPIC_DATA_DIR": str(self.root / "data"),
            "UNIPIC_EVENTS_MODE": "push", "UNIPIC_RATE_LIMIT_PER_MINUTE": "10000000", "UNIPIC_PUBLIC_URL": public_url,
            "UNIPIC_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS), "UNIPIC_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, owners: int = 1) -> None:
        """Postgres, Redis, the schema, a worker token and `owners` API keys (the owners of the jobs made here)."""
        self.pg.start()
        self.redis.start()
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=self.env(), cwd=ROOT, check=True,
                       capture_output=True)
        from storage.db import make_engine, make_session_factory
        from storage.fleet.tokens import WorkerTokenStore
        from storage.jobs.events import attach_from_settings
        from storage.keys import KeyStore
        from storage.settings import load_settings

        self.settings = load_settings(database_url=self.pg.url, redis_url=self.redis.url,
                                      storage_url=f"file://{self.root / 'objects'}", data_dir=self.root / "data")
        self.engine = make_engine(self.settings)
        self.sessions = make_session_factory(self.engine)
        attach_from_settings(self.sessions, self.settings)  # jobs made here wake the waiting claims
        self.token = WorkerTokenStore(self.sessions).create("bench-fleet", kinds=["generate"])[1]
        self.owner_ids = [KeyStore(self.sessions).create(f"bench-fleet-{i}")[0].id for i in range(owners)]

    def start_apis(self, count: int, tree: Path = ROOT) -> list[str]:
        """`count` fresh API processes (from `tree`); their base URLs."""
        import httpx

        for _ in range(count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = open(self.root / "api.log", "ab")  # noqa: SIM115 - the child keeps it
            proc = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port",
                                     str(port)], env=self.env(url), cwd=tree, stdout=log, stderr=subprocess.STDOUT)
            self.apis.append((proc, url))
            wait_until(lambda u=url: httpx.get(f"{u}/healthz", timeout=2).status_code == 200, 60, "API")
        return [url for _, url in self.apis]

    def stop_apis(self) -> None:
        for proc, _ in self.apis:
            proc.terminate()
        for proc, _ in self.apis:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        self.apis = []

    def clear_jobs(self) -> None:
        """Cancel what an earlier run left queued (and ask the running ones to stop), through the job store like
        any other cancel, so the next run sees only its own jobs."""
        import sqlalchemy as sa

        from storage.errors import IllegalTransition
        from storage.jobs.store import JobStore

        with self.engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT id FROM jobs WHERE status IN ('queued', 'running')")).scalars().all()
        store = JobStore(self.sessions)
        for job_id in ids:
            with contextlib.suppress(IllegalTransition):  # it finished meanwhile
                store.request_cancel(job_id, None)

    def xact_commit(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'unipic'"))
                       .scalar_one())

    def _cpu(self) -> tuple[float, float]:
        api = sum(cpu_seconds(p) for proc, _ in self.apis for p in api_pids(proc.pid))
        return api, self._pg_cpu()

    def _pg_cpu(self) -> float:
        """Postgres's CPU seconds so far: its live processes, and (the postmaster's cutime/cstime) the backends
        that have exited, which a pool's overflow connections do all the time."""
        postmaster = int((self.pg.datadir / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        exited = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        live = 0.0
        for pid in api_pids(postmaster):
            with contextlib.suppress(OSError):
                live += cpu_seconds(pid)
        return exited + live

    def rss_mb(self) -> float:
        total = 0
        for proc, _ in self.apis:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def mark(self) -> tuple[float, float, int, float]:
        api, pg = self._cpu()
        return api, pg, self.xact_commit(), time.monotonic()

    def since(self, mark: tuple[float, float, int, float]) -> Usage:
        """What the time since `mark` cost."""
        api0, pg0, tx0, t0 = mark
        api1, pg1, tx1, t1 = self.mark()
        span = t1 - t0
        return Usage(span, (tx1 - tx0) / span, 100 * (api1 - api0) / span, 100 * (pg1 - pg0) / span, self.rss_mb(),
                     os.getloadavg()[0])

    async def usage(self, seconds: float) -> Usage:
        """Sleep `seconds` and say what they cost."""
        mark = await asyncio.to_thread(self.mark)
        await asyncio.sleep(seconds)
        return await asyncio.to_thread(self.since, mark)

    def close(self) -> None:
        self.stop_apis()
        self.engine.dispose()
        self.redis.close()
        self.pg.close()


# ---- idle ---------------------------------------------------------------------------------------------------
@dataclass
class IdleResult:
    tree: str
    n: int
    usage: Usage
    requests: float  # per second, answered
    expected: float  # per second, what N workers should make
    errors: int


def claim_body(name: str, wait: float, first_try: bool, max_items: int = 4) -> dict[str, Any]:
    body: dict[str, Any] = {"worker": name, "max_items": max_items, "wait_seconds": wait,
                            "claim_id": str(uuid.uuid4())}
    if first_try:
        body["first_try"] = True
    return body


async def register(urls: list[str], token: str, names: list[str]) -> None:
    """Each worker's first (registering) heartbeat, 50 at a time: before the clock, not the idle cost."""
    gate = asyncio.Semaphore(50)

    async def one(i: int, name: str) -> None:
        async with gate:
            http = Http(urls[i % len(urls)], token)
            try:
                await http.post("/v1/worker/heartbeat", {"worker": name, "start": True})
            finally:
                http.close()

    await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))


async def beat_forever(http: Http, name: str, counts: dict[str, int]) -> None:
    await asyncio.sleep(random.uniform(0, HEARTBEAT_SECONDS))
    while True:
        try:
            status, _ = await http.post("/v1/worker/heartbeat", {"worker": name})
            counts["answered" if status == 200 else "errors"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def idle_fleet(urls: list[str], token: str, names: list[str], first_try: bool, counts: dict[str, int]) -> None:
    """N idle workers: long-polling claims and heartbeats, until cancelled."""

    async def claims(http: Http, name: str) -> None:
        wait = random.uniform(0, WAIT_SECONDS)  # spread the phases
        while True:
            try:
                status, _ = await http.post("/v1/worker/claim", claim_body(name, wait, first_try))
                counts["answered" if status == 200 else "errors"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["errors"] += 1
                await asyncio.sleep(1)
            wait = WAIT_SECONDS

    conns = [(Http(urls[i % len(urls)], token), Http(urls[i % len(urls)], token)) for i in range(len(names))]
    try:
        await asyncio.gather(*(claims(a, name) for (a, _), name in zip(conns, names, strict=True)),
                             *(beat_forever(b, name, counts) for (_, b), name in zip(conns, names, strict=True)))
    finally:
        for a, b in conns:
            a.close()
            b.close()


async def idle(args: argparse.Namespace) -> list[IdleResult]:
    stack = Stack()
    await asyncio.to_thread(stack.start)
    trees = [("before", Path(args.before_tree).resolve())] if args.before_tree else []
    trees.append(("after", ROOT))
    results = []
    try:
        for n in args.sizes:
            for label, tree in trees:
                urls = await asyncio.to_thread(stack.start_apis, 1, tree)  # a fresh API per run: no state carried
                try:
                    names = [f"fleet-{label}-{n}-{i}" for i in range(n)]
                    await register(urls, stack.token, names)
                    counts = {"answered": 0, "errors": 0}
                    work = idle_fleet(urls, stack.token, names, label == "after", counts)
                    task = asyncio.create_task(work)
                    await asyncio.sleep(args.warmup)
                    before = dict(counts)
                    usage = await stack.usage(args.window)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                finally:
                    await asyncio.to_thread(stack.stop_apis)
                result = IdleResult(label, n, usage, (counts["answered"] - before["answered"]) / usage.seconds,
                                    n / WAIT_SECONDS + n / HEARTBEAT_SECONDS, counts["errors"] - before["errors"])
                results.append(result)
                print(idle_table([result]).splitlines()[-1], flush=True)
    finally:
        stack.close()
    return results


def idle_table(results: list[IdleResult]) -> str:
    rows = ["| tree | idle workers | Postgres tx/s | tx/s per worker | API CPU | API RSS | Postgres CPU | "
            "requests/s answered (of expected) | errors | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        u = r.usage
        per = f"{u.tps / r.n:.4f}" if r.n else "-"
        rows.append(f"| {r.tree} | {r.n} | {u.tps:.1f} | {per} | {u.api_cpu:.0f} % | {u.api_rss_mb:.0f} MB | "
                    f"{u.pg_cpu:.0f} % | {r.requests:.0f} ({r.expected:.0f}) | {r.errors} | {u.load:.1f} |")
    return "\n".join(rows)


def main() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    idle_args = sub.add_parser("idle", help="what idle workers cost")
    idle_args.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[0, 100, 1000])
    idle_args.add_argument("--window", type=float, default=15.0, help="seconds measured per run")
    idle_args.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    idle_args.add_argument("--before-tree", default="", help="another checkout to run side by side (before)")
    idle_args.add_argument("--json", default="", help="also write the results here (for `load --idle-json`)")
    from bench.fleet_load import add_arguments, load

    add_arguments(sub.add_parser("load", help="claim ceiling, latencies, jobs/s end to end, projection"))
    args = parser.parse_args()
    if args.mode == "idle":
        results = asyncio.run(idle(args))
        print()
        print(idle_table(results))
        summary = json.dumps([{"tree": r.tree, "n": r.n, "tps": r.usage.tps, "api_cpu": r.usage.api_cpu,
                               "rss_mb": r.usage.api_rss_mb} for r in results])
        print(summary)
        if args.json:
            Path(args.json).write_text(summary)
    else:
        asyncio.run(load(args))


if __name__ == "__main__":
    main()
