"""Worker benchmark: end-to-end overhead per job beside a bare Celery round trip, in the same run.

Starts a real model worker (`celery -A workers.gpu worker --pool solo`, tiny model) and a bare Celery worker
(this module's `noop` task, same Celery settings), both on a private Redis db, with Postgres (a private schema
in database `test`, dropped afterwards) and an S3 server (moto over HTTP, or `--storage local`). Then, at a
steady light load (one job in flight, alternating with one bare round trip), it measures for each job:

    overhead = (finished_at - submit start) - model_seconds

i.e. everything but the model: the insert, the broker, the claim, input/result I/O, the upload and the
completing transaction. The bare round trip is send -> worker runs a no-op -> reply on a Redis list.

    python -m bench.worker [--jobs 200] [--kind generate] [--storage s3|local]
    python -m bench.worker --model-busy [...]   # model busy: whole serial, pipelined, continuous (bench.pipeline)

Then, in the same run (unless `--no-gateway`; S3 only), the same jobs through a gateway worker over loopback HTTP
(`bench.gateway`): its overhead and its claim-to-done overhead (the transport's per-batch cost) beside Celery's.

Targets on the 2-core box: overhead p50 < 25 ms, p99 < 100 ms. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("BENCH_REDIS_BASE", "redis://127.0.0.1:6379")
REDIS = os.environ.get("BENCH_REDIS_URL", "")  # default: an empty db locked for this run (see free_redis_db)
NOOP_QUEUE = "bench.noop"
NOOP_TASK = "bench.noop"


def free_redis_db() -> str:
    """An empty Redis db, locked (a key in db 0) for this run so concurrent test sessions do not share it."""
    import redis

    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    for db in range(15, 0, -1):
        if admin.set(f"unipic:test:db-lock:{db}", f"bench-{os.getpid()}", nx=True, ex=3600):
            if redis.Redis.from_url(f"{REDIS_BASE}/{db}").dbsize() == 0:
                return f"{REDIS_BASE}/{db}"
            admin.delete(f"unipic:test:db-lock:{db}")
    raise SystemExit("no free Redis db; set BENCH_REDIS_URL")


def _noop_app() -> Celery:
    from storage.settings import load_settings
    from workers.app import make_celery, queue

    broker = os.environ.get("BENCH_NOOP_BROKER") or REDIS or "redis://127.0.0.1:6379/15"
    app = make_celery(load_settings(broker_url=broker), name="bench-noop")
    app.conf.task_queues = [queue(NOOP_QUEUE)]
    return app


app = _noop_app()  # `celery -A bench.worker worker` serves the bare round trip


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(reply_key: str) -> None:
    """Reply on a Redis list: the far end of the bare round trip."""
    client = _reply_client()
    client.rpush(reply_key, b"1")
    client.expire(reply_key, 60)


_client: Any = None


def _reply_client() -> Any:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_NOOP_BROKER"])
    return _client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {host}:{port}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Stack:
    """Private Postgres schema, Redis db, S3 server, a model worker and a bare worker."""

    def __init__(self, storage: str) -> None:
        self.schema = f"bench_{secrets.token_hex(4)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="unipic-bench-worker-"))
        self.storage = storage
        self.procs: list[subprocess.Popen[bytes]] = []
        self.moto: Any = None

    def __enter__(self) -> Self:
        import psycopg
        import redis

        with psycopg.connect(PG.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        redis.Redis.from_url(REDIS).flushdb()
        overrides: dict[str, Any] = {
            "data_dir": self.tmp, "database_url": PG, "db_schema": self.schema, "broker_url": REDIS, "redis_url": REDIS,
            "model": "tiny", "model_dtype": "float32",
        }
        if self.storage == "s3":
            import boto3

            for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                                ("AWS_DEFAULT_REGION", "us-east-1")):
                os.environ.setdefault(name, value)
            # its own process, as a real S3 endpoint would be: not competing with this loop for the GIL
            port = free_port()
            self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            host = "127.0.0.1"
            _wait_port(host, port)
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            overrides.update(storage_url="s3://bench/objects", s3_endpoint_url=endpoint)
        from storage.migrate import upgrade
        from storage.settings import load_settings

        self.settings = load_settings(**overrides)
        upgrade(self.settings)
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", BENCH_NOOP_BROKER=REDIS,
                   PYTHONPATH=str(ROOT))
        for name, value in self.settings.model_dump().items():
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"UNIPIC_{name.upper()}"] = str(value)
        env.update(UNIPIC_WORKER_DEVICE="cpu", UNIPIC_PROGRESS_INTERVAL_MS="250")
        return env

    def start(self, module: str, name: str, log: str) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", module, "worker", "--pool", "solo", "--concurrency", "1",
               "--hostname", f"{name}@%h", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(subprocess.Popen(cmd, env=self.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))

    def wait_worker_registered(self, sessions: Any, timeout: float = 300) -> None:
        from storage.fleet.registry import WorkerRegistry

        registry = WorkerRegistry(sessions)
        deadline = time.monotonic() + timeout
        while not registry.live(60):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"model worker did not start; see {self.tmp}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        import psycopg
        import redis

        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait(timeout=30)
        redis.Redis.from_url(REDIS).flushdb()
        redis.Redis.from_url(f"{REDIS_BASE}/0").delete(f"unipic:test:db-lock:{REDIS.rsplit('/', 1)[1]}")
        with psycopg.connect(PG.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def bare_round_trip(sender: Celery, client: Any) -> float:
    key = f"bench:reply:{secrets.token_hex(6)}"
    started = time.perf_counter()
    sender.send_task(NOOP_TASK, args=[key], queue=NOOP_QUEUE)
    if client.blpop([key], timeout=30) is None:
        raise SystemExit("bare worker did not answer")
    return time.perf_counter() - started


def one_job(store: Any, sender: Celery | None, owner_id: str, kind: str, seed: int, objects: Any,
            steps: int = 2) -> dict[str, float]:
    """One job submitted and waited for; `sender=None`: no broker message (the gateway path claims by polling)."""
    from datetime import UTC, datetime

    from storage.jobs.ids import new_id
    from storage.objects.base import input_key
    from storage.records import NewJob
    from storage.routing import queue_for, send_and_stamp
    from storage.states import JobStatus

    job_id = new_id()
    params: dict[str, Any]
    key = None
    if kind == "generate":
        params = {"prompt": "a red cube", "negative_prompt": None, "width": 64, "height": 64, "num_images": 1,
                  "steps": steps, "guidance_scale": 3.0, "guidance_schedule": "constant", "temperature": 1.0,
                  "seed": seed, "output_format": "png"}
        compat = f"generate:64:{steps}:3.0:constant"
    else:
        params = {"question": "what is this?", "size": 64, "max_new_tokens": 4, "temperature": 0.0, "seed": seed}
        compat = "understand:64"
        key = input_key(job_id)
        objects.put(key, _PNG, "image/png")  # the API stores inputs at submission: not part of the latency
    submitted = datetime.now(UTC)
    job = store.create(NewJob(id=job_id, owner_id=owner_id, kind=kind, params=params, compat_key=compat,
                              queue=queue_for(kind, 64), seed=seed, input_key=key))
    if sender is not None:
        send_and_stamp(sender, store, [job.ref])  # the enqueue contract: send, then stamp
    deadline = time.monotonic() + 120
    while True:
        done = store.get(job_id)
        if done.terminal:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {done.status} after 120 s")
        time.sleep(0.01)  # latency comes from finished_at, not from when we look
    if done.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job_id} ended {done.status}: {done.error_message}")
    latency = (done.finished_at - submitted).total_seconds()
    claimed = (done.finished_at - done.started_at).total_seconds() - (done.model_seconds or 0)
    return {"latency": latency, "model": done.model_seconds or 0.0, "overhead": latency - (done.model_seconds or 0),
            "claim_to_done": claimed,
            "upload": done.upload_seconds or 0.0, "queue": done.queue_seconds or 0.0}


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


_PNG = _png()


def main() -> None:
    if "--model-busy" in sys.argv[1:]:  # issues 20, 25: whole serial, pipelined, continuous, in process
        from bench.pipeline import main as model_busy

        model_busy([a for a in sys.argv[1:] if a != "--model-busy"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--kind", choices=["generate", "understand"], default="generate")
    parser.add_argument("--storage", choices=["s3", "local"], default="s3")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="idle time between submissions")
    parser.add_argument("--no-gateway", action="store_true", help="skip the gateway path (bench.gateway)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps of each generate job")
    parser.add_argument("--gateway-events", choices=["push", "poll"], default="push",
                        help="the gateway API's events mode (poll: no cancel long-polls, the worker reads per step)")
    args = parser.parse_args()
    global REDIS
    REDIS = REDIS or free_redis_db()
    os.environ["BENCH_NOOP_BROKER"] = REDIS

    import redis

    from storage.db import make_engine, make_session_factory
    from storage.jobs.events import attach_from_settings
    from storage.jobs.ids import new_id
    from storage.jobs.store import JobStore
    from storage.objects.base import make_object_store
    from storage.tables import ApiKey
    from workers.app import make_celery

    with Stack(args.storage) as stack:
        stack.start("workers.gpu", "bench-gpu", "gpu.log")
        stack.start("bench.worker", "bench-noop", "noop.log")
        sessions = make_session_factory(make_engine(stack.settings))
        attach_from_settings(sessions, stack.settings)  # as the API: creating a job wakes its queue's claims
        stack.wait_worker_registered(sessions)
        store = JobStore(sessions)
        objects = make_object_store(stack.settings)
        owner_id = new_id()
        with sessions.begin() as s:
            s.add(ApiKey(id=owner_id, name="bench", key_prefix="upk_bench", key_hash=secrets.token_hex(32),
                         webhook_secret="whsec_" + secrets.token_hex(24)))
        sender = make_celery(stack.settings)
        client = redis.Redis.from_url(REDIS)

        jobs: list[dict[str, float]] = []
        trips: list[float] = []
        for i in range(args.warmup + args.jobs):
            job = one_job(store, sender, owner_id, args.kind, i, objects, args.steps)
            time.sleep(args.gap_ms / 1000)
            trip = bare_round_trip(sender, client)
            time.sleep(args.gap_ms / 1000)
            if i >= args.warmup:
                jobs.append(job)
                trips.append(trip)
        remote: list[dict[str, float]] = []
        if not args.no_gateway and args.storage == "s3":  # presigned URLs need S3
            from bench.gateway import GatewayPath

            stack.procs[0].terminate()  # the Celery model worker: the gateway worker alone serves now
            stack.procs[0].wait(timeout=60)
            gateway = GatewayPath(stack, free_port())
            gateway.start(sessions, events_mode=args.gateway_events)
            for i in range(args.warmup + args.jobs):
                if i == args.warmup:
                    requests_before = gateway.worker_requests()
                job = one_job(store, None, owner_id, args.kind, 100_000 + i, objects, args.steps)
                time.sleep(args.gap_ms / 1000)
                if i >= args.warmup:
                    remote.append(job)
            requests = gateway.worker_requests()
            per_job = {route: round((n - requests_before.get(route, 0)) / len(remote), 2)
                       for route, n in sorted(requests.items()) if n > requests_before.get(route, 0)}

    def ms(values: list[float], q: float) -> float:
        return round(1000 * percentile(values, q), 1)

    over = [j["overhead"] for j in jobs]
    report: dict[str, Any] = {
        "jobs": len(jobs), "kind": args.kind, "storage": args.storage,
        "overhead_ms": {"p50": ms(over, 50), "p90": ms(over, 90), "p99": ms(over, 99),
                        "mean": round(1000 * statistics.mean(over), 1)},
        "bare_celery_round_trip_ms": {"p50": ms(trips, 50), "p90": ms(trips, 90), "p99": ms(trips, 99)},
        "latency_ms": {"p50": ms([j["latency"] for j in jobs], 50), "p99": ms([j["latency"] for j in jobs], 99)},
        "model_ms_p50": ms([j["model"] for j in jobs], 50),
        "upload_ms_p50": ms([j["upload"] for j in jobs], 50),
        "queue_wait_ms_p50": ms([j["queue"] for j in jobs], 50),
        "claim_to_done_ms": {"p50": ms([j["claim_to_done"] for j in jobs], 50),
                             "p99": ms([j["claim_to_done"] for j in jobs], 99)},
        "targets": {"overhead_p50_ms": 25, "overhead_p99_ms": 100},
    }
    if remote:
        over_remote = [j["overhead"] for j in remote]
        report["gateway"] = {
            "overhead_ms": {"p50": ms(over_remote, 50), "p90": ms(over_remote, 90), "p99": ms(over_remote, 99)},
            "claim_to_done_ms": {"p50": ms([j["claim_to_done"] for j in remote], 50),
                                 "p90": ms([j["claim_to_done"] for j in remote], 90),
                                 "p99": ms([j["claim_to_done"] for j in remote], 99)},
            "queue_wait_ms_p50": ms([j["queue"] for j in remote], 50),
            "events": args.gateway_events,
            "requests_per_job": per_job,  # worker gateway routes, from the API's request counter
        }
    print(f"{'':28}{'p50':>8}{'p90':>8}{'p99':>8}  (ms)")
    for label, block in (("job overhead (no model)", report["overhead_ms"]),
                         ("bare celery round trip", report["bare_celery_round_trip_ms"])):
        print(f"{label:28}{block['p50']:>8}{block['p90']:>8}{block['p99']:>8}")
    if remote:
        for label, block in (("gateway job overhead", report["gateway"]["overhead_ms"]),
                             ("gateway claim-to-done", report["gateway"]["claim_to_done_ms"])):
            print(f"{label:28}{block['p50']:>8}{block['p90']:>8}{block['p99']:>8}")
        print(f"gateway requests per job ({args.gateway_events} events, {args.steps} steps):")
        for route, n in report["gateway"]["requests_per_job"].items():
            print(f"  {route:34}{n:>8}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
