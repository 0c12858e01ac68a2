"""Event streams at scale: polling vs one Redis subscription per API process (issue 16). Never run in CI.

    .venv/bin/python -m bench.events --sizes 100,1000,5000 --window 10

For each mode (`UNIPIC_EVENTS_MODE=poll`, then `push`) and each N, on one API process (uvicorn, a private
Postgres and Redis, local objects, no model worker: this process plays the worker through `JobStore`, with the
same after-commit publisher a worker attaches):
1. N queued jobs (one batch, in a queue nobody serves) and N SSE streams on them, opened with raw asyncio sockets
   (the load generator must stay cheap), each until its first `status` event;
2. a window of `--window` seconds in which `--changes` jobs per second are claimed and completed (the event
   latency: from this process's commit to its stream seeing `done`), while another key sends `GET /v1/jobs?limit=1`
   10 times a second;
3. then the whole batch is canceled, and every stream must end with `done` (nothing missed).
It prints, per mode and N: Postgres transactions/s over the window (pg_stat_database xact_commit), API CPU (its
/proc utime+stime over the window, % of one core), event latency p50/p99, the other key's GET p50/p99, and how
many streams saw their `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import ROOT, PrivatePostgres, PrivateRedis, free_port, wait_until

QUEUE = "bench.events"
OPEN_CONCURRENCY = 200


@dataclass
class Stream:
    job_id: str
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    done_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0


@dataclass
class Result:
    mode: str
    n: int
    opened: int
    open_seconds: float
    tps: float
    cpu: float
    latency: list[float]
    gets: list[float]
    done: int


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def follow(host: str, port: int, key: str, stream: Stream, gate: asyncio.Semaphore) -> None:
    """One SSE client on a raw socket: marks `opened` at the first event and `done` at the `done` event."""
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stream.opened.set()
            return
        writer.write(f"GET /v1/jobs/{stream.job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}"
                     f"\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        stream.status = int(head.split(b" ", 2)[1])
        if stream.status != 200:
            stream.opened.set()
            writer.close()
            return
        while not stream.opened.is_set():
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"event: "):
                stream.opened.set()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: done"):
                stream.done_at = time.monotonic()
                stream.done.set()
                return
    finally:
        stream.opened.set()
        writer.close()


async def get_loop(host: str, port: int, key: str, stop: asyncio.Event, out: list[float]) -> None:
    """Another key's plain `GET /v1/jobs?limit=1`, 10 per second, on a keep-alive connection."""
    request = (f"GET /v1/jobs?limit=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n").encode()
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not stop.is_set():
                started = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                              if h.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                out.append(time.monotonic() - started)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        except (OSError, asyncio.IncompleteReadError):  # the server closed the keep-alive connection: reopen
            continue
        finally:
            writer.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_pids(pid: int) -> list[int]:
    """The API process and its children (uvicorn runs in the CLI process itself with one worker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(int(p) for p in out)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="unipic-events-"))
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis(self.root / "redis")
        self.runs: list[str] = []
        self.queue = QUEUE

    def env(self, mode: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "UNIPIC_DATABASE_URL": self.pg.url, "UNIPIC_BROKER_URL": self.redis.url, "UNIPIC_REDIS_URL": self.redis.url,
            "UNIPIC_STORAGE_URL": f"file://{self.root / 'objects'}", "UNIPIC_DATA_DIR": str(self.root / "data"),
            "UNIPIC_EVENTS_MODE": mode, "UNIPIC_EVENTS_MAX_STREAMS": "20000",
            "UNIPIC_EVENTS_MAX_STREAMS_PER_KEY": "20000", "UNIPIC_RATE_LIMIT_PER_MINUTE": "10000000",
            "UNIPIC_MAX_ACTIVE_JOBS_PER_KEY": "1000000", "UNIPIC_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        })
        return env

    def setup(self) -> None:
        self.pg.start()
        self.redis.start()
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=self.env("push"), cwd=ROOT, check=True,
                       capture_output=True)
        from storage.db import make_engine, make_session_factory
        from storage.jobs.events import RedisPublisher, attach
        from storage.jobs.store import JobStore
        from storage.keys import KeyStore
        from storage.settings import load_settings

        settings = load_settings(database_url=self.pg.url, redis_url=self.redis.url,
                                 storage_url=f"file://{self.root / 'objects'}", data_dir=self.root / "data")
        self.engine = make_engine(settings)
        sessions = make_session_factory(self.engine)
        attach(sessions, RedisPublisher(self.redis.url))  # as a worker does
        self.jobs = JobStore(sessions)
        keys = KeyStore(sessions)
        self.key = keys.create("bench-streams")[1]
        self.other = keys.create("bench-other")[1]
        self.owner = keys.authenticate(self.key).id  # type: ignore[union-attr]

    def xact_commit(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'unipic'"))
                       .scalar_one())

    def start_api(self, mode: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        log = open(self.root / f"api-{mode}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port",
                                 str(port)], env=self.env(mode), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        import httpx

        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200, 60, "API")
        return proc, port

    def make_jobs(self, n: int) -> tuple[str, list[str]]:
        from storage.records import NewBatch, NewJob

        params = {"prompt": "bench", "width": 256, "height": 256, "num_images": 1, "steps": 8}
        self.queue = f"{QUEUE}.{len(self.runs)}"  # a queue per run: an earlier run's unchanged jobs stay apart
        self.runs.append(self.queue)
        news = [NewJob(owner_id=self.owner, kind="generate", params=params, compat_key=f"bench:{i}",
                       queue=self.queue, seed=i) for i in range(n)]
        batch, records = self.jobs.create_many(news, NewBatch(owner_id=self.owner))
        assert batch is not None
        return batch.id, [r.id for r in records]

    def change(self, job_id: str) -> float:
        """Play the worker for one job (the run's oldest queued one, which the changes follow in order): claim
        the run's queue, complete; the commit time of the completion."""
        [claim] = self.jobs.claim_next(self.queue, "bench", 60, 1, 1 << 40)
        assert claim.job_id == job_id, f"claimed {claim.job_id}, expected {job_id}"
        self.jobs.complete(claim, [])
        return time.monotonic()

    async def run(self, mode: str, n: int) -> Result:
        proc, port = self.start_api(mode)
        try:
            return await self._measure(mode, n, port, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # open streams hold a graceful shutdown: end it
                proc.kill()
                proc.wait(30)

    async def _measure(self, mode: str, n: int, port: int, pid: int) -> Result:
        batch_id, ids = await asyncio.to_thread(self.make_jobs, n)
        streams = [Stream(j) for j in ids]
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        started = time.monotonic()
        tasks = [asyncio.create_task(follow("127.0.0.1", port, self.key, s, gate)) for s in streams]
        await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in streams)), self.args.open_timeout)
        open_seconds = time.monotonic() - started
        opened = sum(1 for s in streams if s.status == 200)
        # the window: state changes at a steady pace, another key's GETs, counters before and after
        gets: list[float] = []
        stop = asyncio.Event()
        getter = asyncio.create_task(get_loop("127.0.0.1", port, self.other, stop, gets))
        commits: dict[str, float] = {}
        pids = api_pids(pid)
        cpu0, tx0, t0 = sum(cpu_seconds(p) for p in pids), await asyncio.to_thread(self.xact_commit), time.monotonic()
        changes = ids[: int(self.args.changes * self.args.window)]
        for i, job_id in enumerate(changes):
            await asyncio.sleep(max(0.0, t0 + i / self.args.changes - time.monotonic()))
            commits[job_id] = await asyncio.to_thread(self.change, job_id)
        await asyncio.sleep(max(0.0, t0 + self.args.window - time.monotonic()))
        cpu1, tx1, t1 = sum(cpu_seconds(p) for p in pids), await asyncio.to_thread(self.xact_commit), time.monotonic()
        stop.set()
        await getter
        # the end: cancel the rest; every stream must see its done
        await asyncio.to_thread(self.jobs.cancel_batch, batch_id, None)
        await asyncio.wait(tasks, timeout=self.args.done_timeout)
        by_id = {s.job_id: s for s in streams}
        latency = [done - at for j, at in commits.items() if (done := by_id[j].done_at) is not None]
        for task in tasks:
            task.cancel()
        return Result(mode, n, opened, open_seconds, (tx1 - tx0) / (t1 - t0), 100 * (cpu1 - cpu0) / (t1 - t0),
                      latency, gets, sum(1 for s in streams if s.done.is_set()))

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.pg.close()


def table(results: list[Result]) -> str:
    rows = ["| mode | streams | opened (s) | Postgres tx/s | API CPU | event latency p50 / p99 | other key's GET "
            "p50 / p99 | `done` seen |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.mode} | {r.n} | {r.opened} ({r.open_seconds:.1f}) | {r.tps:.0f} | {r.cpu:.0f} % | "
                    f"{1000 * pct(r.latency, 0.5):.0f} / {1000 * pct(r.latency, 0.99):.0f} ms | "
                    f"{1000 * pct(r.gets, 0.5):.0f} / {1000 * pct(r.gets, 0.99):.0f} ms | {r.done}/{r.n} |")
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> list[Result]:
    bench = Bench(args)
    await asyncio.to_thread(bench.setup)
    results = []
    try:
        for n in args.sizes:
            for mode in args.modes:
                result = await bench.run(mode, n)
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    finally:
        bench.close()
    return results


def main() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[100, 1000, 5000])
    parser.add_argument("--modes", type=lambda v: v.split(","), default=["poll", "push"])
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--changes", type=float, default=5.0, help="jobs finished per second in the window")
    parser.add_argument("--open-timeout", type=float, default=300.0)
    parser.add_argument("--done-timeout", type=float, default=120.0)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print()
    print(table(results))
    print(json.dumps([{"mode": r.mode, "n": r.n, "tps": r.tps, "cpu": r.cpu} for r in results]))


if __name__ == "__main__":
    main()
