"""A fleet of idle gateway workers: what N of them cost the database (issue 24, item 3). Never run in CI.

    .venv/bin/python -m bench.fleet --sizes 0,10,100,1000 --window 15

One API process (`unipic api`, push events, a private Postgres and Redis, local objects) and, for each N, N
simulated gateway workers in this process: async httpx clients speaking the real protocol, each holding a
long-polling `claim` (`wait_seconds` 20, a fresh `claim_id` per claim, as `workers.transport.gateway_client` sends) and
sending a `heartbeat` every `heartbeat_seconds` (10), with nothing queued. Their phases are spread at random (the
first claim waits a random part of 20 s, the first beat comes at a random point of its period) so the window
sees the steady state. After `--warmup` seconds, it measures `--window` seconds: Postgres transactions/s
(pg_stat_database xact_commit of the API's database), the API process's CPU (% of one core) and how many
requests the workers made. N = 0 is the API's own background cost.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.events import api_pids, cpu_seconds
from bench.stack import ROOT, PrivatePostgres, PrivateRedis, free_port, wait_until

WAIT_SECONDS = 20.0
HEARTBEAT_SECONDS = 10.0
PER_CLIENT = 50


@dataclass
class Result:
    n: int
    tps: float
    cpu: float
    claims: int
    beats: int
    errors: int


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="unipic-fleet-"))
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis(self.root / "redis")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "UNIPIC_DATABASE_URL": self.pg.url, "UNIPIC_BROKER_URL": self.redis.url, "UNIPIC_REDIS_URL": self.redis.url,
            "UNIPIC_STORAGE_URL": f"file://{self.root / 'objects'}", "UNIPIC_DATA_DIR": str(self.root / "data"),
            "UNIPIC_EVENTS_MODE": "push", "UNIPIC_RATE_LIMIT_PER_MINUTE": "10000000",
            "UNIPIC_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS), "UNIPIC_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def setup(self) -> None:
        self.pg.start()
        self.redis.start()
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=self.env(), cwd=ROOT, check=True,
                       capture_output=True)
        from storage.db import make_engine, make_session_factory
        from storage.fleet.tokens import WorkerTokenStore
        from storage.settings import load_settings

        settings = load_settings(database_url=self.pg.url, redis_url=self.redis.url,
                                 storage_url=f"file://{self.root / 'objects'}", data_dir=self.root / "data")
        self.engine = make_engine(settings)
        self.token = WorkerTokenStore(make_session_factory(self.engine)).create("bench-fleet")[1]

    def xact_commit(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'unipic'"))
                       .scalar_one())

    def start_api(self) -> tuple[subprocess.Popen[bytes], str]:
        import httpx

        port = free_port()
        log = open(self.root / "api.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port",
                                 str(port)], env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 60, "API")
        return proc, url

    async def measure(self, n: int, url: str, pid: int) -> Result:
        import httpx

        counts = {"claims": 0, "beats": 0, "errors": 0}
        stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.token}"}
        # one client per PER_CLIENT workers: one httpx pool of thousands of connections is slow to pick from
        clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=WAIT_SECONDS + 30,
                                     limits=httpx.Limits(max_connections=2 * PER_CLIENT + 2))
                   for _ in range(max(1, -(-n // PER_CLIENT)))]
        try:
            async def claims(name: str, client: httpx.AsyncClient) -> None:
                wait = random.uniform(0, WAIT_SECONDS)  # spread the phases
                while not stop.is_set():
                    try:
                        r = await client.post("/v1/worker/claim", json={
                            "worker": name, "max_items": 4, "wait_seconds": wait, "claim_id": str(uuid.uuid4())})
                        counts["claims" if r.status_code == 200 else "errors"] += 1
                    except httpx.HTTPError:
                        counts["errors"] += 1
                        await asyncio.sleep(1)
                    wait = WAIT_SECONDS

            async def beats(name: str, client: httpx.AsyncClient) -> None:
                await asyncio.sleep(random.uniform(0, HEARTBEAT_SECONDS))
                while not stop.is_set():
                    try:
                        r = await client.post("/v1/worker/heartbeat", json={"worker": name})
                        counts["beats" if r.status_code == 200 else "errors"] += 1
                    except httpx.HTTPError:
                        counts["errors"] += 1
                    await asyncio.sleep(HEARTBEAT_SECONDS)

            names = [f"fleet-{n}-{i}" for i in range(n)]
            gate = asyncio.Semaphore(50)

            async def register(name: str, client: httpx.AsyncClient) -> None:
                async with gate:
                    await client.post("/v1/worker/heartbeat", json={"worker": name, "start": True})

            # registrations come before the clock: they are not the idle cost
            await asyncio.gather(*(register(name, clients[i // PER_CLIENT]) for i, name in enumerate(names)))
            tasks = [asyncio.create_task(f(name, clients[i // PER_CLIENT]))
                     for i, name in enumerate(names) for f in (claims, beats)]
            await asyncio.sleep(self.args.warmup)
            pids = api_pids(pid)
            before = dict(counts)
            cpu0, tx0, t0 = sum(cpu_seconds(p) for p in pids), await asyncio.to_thread(self.xact_commit), \
                time.monotonic()
            await asyncio.sleep(self.args.window)
            cpu1, tx1, t1 = sum(cpu_seconds(p) for p in pids), await asyncio.to_thread(self.xact_commit), \
                time.monotonic()
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for client in clients:
                await client.aclose()
        return Result(n, (tx1 - tx0) / (t1 - t0), 100 * (cpu1 - cpu0) / (t1 - t0),
                      counts["claims"] - before["claims"], counts["beats"] - before["beats"],
                      counts["errors"] - before["errors"])

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.pg.close()


def table(results: list[Result], window: float) -> str:
    rows = ["| idle workers | Postgres tx/s | tx/s per worker | tx per request | API CPU | claims answered | "
            "heartbeats | errors |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        per = f"{r.tps / r.n:.3f}" if r.n else "-"
        requests = (r.claims + r.beats) / window
        per_request = f"{r.tps / requests:.2f}" if requests else "-"
        rows.append(f"| {r.n} | {r.tps:.1f} | {per} | {per_request} | {r.cpu:.0f} % | {r.claims / window:.1f}/s | "
                    f"{r.beats / window:.1f}/s | {r.errors} |")
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> list[Result]:
    fleet = Fleet(args)
    await asyncio.to_thread(fleet.setup)
    results = []
    try:
        for n in args.sizes:
            proc, url = await asyncio.to_thread(fleet.start_api)  # a fresh API per N: no state carried over
            try:
                result = await fleet.measure(n, url, proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
            results.append(result)
            print(table([result], args.window).splitlines()[-1], flush=True)
    finally:
        fleet.close()
    return results


def main() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[0, 10, 100, 1000])
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per N")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print()
    print(table(results, args.window))
    print(json.dumps([{"n": r.n, "tps": r.tps, "cpu": r.cpu} for r in results]))


if __name__ == "__main__":
    main()
