"""Soak run: thousands of jobs through the whole stack while scenarios 2-6 of the reliability suite interleave.

    python -m bench.soak --jobs 5000 --workers 2 --rate 20

Starts private Postgres and Redis, the S3 HTTP server, the API, model workers (tiny model unless --model), the
webhook worker and the sweeper as separate processes; submits `--jobs` submissions with the load generator; every
`--every` seconds does one of: SIGKILL a worker, restart Redis (losing its data), restart Postgres, take the
webhook receiver down for a few seconds, gracefully restart every worker in turn. Prints the report table and
exits non-zero if any job was lost or duplicated or any invariant failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from bench.invariants import check, s3_client, wait_all_terminal
from bench.loadgen import LoadConfig, LoadGenerator
from bench.receiver import WebhookReceiver
from bench.stack import ROOT, Stack, StackConfig


def chaos(stack: Stack, receiver: WebhookReceiver, every: float, stop: threading.Event, log: list[str]) -> None:
    workers = [n for n in stack.services if n.startswith("worker")]
    actions = itertools.cycle(["sigkill", "redis", "postgres", "receiver", "rolling"])
    while not stop.wait(every):
        action = next(actions)
        log.append(f"{time.strftime('%H:%M:%S')} {action}")
        if action == "sigkill":
            stack.restart_service(workers[len(log) % len(workers)], signal.SIGKILL)
        elif action == "redis":
            stack.redis.restart(down_seconds=1.0)
        elif action == "postgres":
            stack.pg.restart(down_seconds=2.0)
        elif action == "receiver":
            receiver.down()
            time.sleep(3)
            receiver.up()
        else:
            for name in workers:
                stack.restart_service(name, signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs to submit (every 10th submission is a batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=20.0, help="submissions per second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between chaos actions")
    parser.add_argument("--model", default="", help="checkpoint dir (default: write a tiny one)")
    parser.add_argument("--settle", type=float, default=1800.0, help="seconds to wait for the backlog")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="unipic-soak-"))
    checkpoint = Path(args.model) if args.model else _tiny_checkpoint(root / "ckpt")
    stack = Stack(StackConfig(checkpoint=checkpoint, workers=args.workers), root / "stack")
    receiver = WebhookReceiver()
    stop = threading.Event()
    chaos_log: list[str] = []
    try:
        stack.start()
        key = json.loads(subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--name", "soak",
                                         "--json"], env=stack.env(), cwd=ROOT, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        config = LoadConfig(webhook_url=receiver.url)
        jobs_per_submission = 1 + (config.batch_items - 1) / config.batch_every
        load = LoadGenerator(stack.api_url, key["key"], config)
        started = time.monotonic()
        load.start(threads=4, rate=args.rate, limit=math.ceil(args.jobs / jobs_per_submission))
        chaos_thread = threading.Thread(target=chaos, args=(stack, receiver, args.every, stop, chaos_log))
        chaos_thread.start()
        load.wait()
        stop.set()
        chaos_thread.join()
        engine = sa.create_engine(stack.pg.url, pool_pre_ping=True)
        wait_all_terminal(engine, load.state.accepted, args.settle)
        # events whose delivery failed during an outage wait for their retry (the second comes after ~5 min)
        drained = wait_outbox_drained(engine, args.settle)
        report = check(engine, s3_client(stack.env()["UNIPIC_S3_ENDPOINT_URL"]), stack.BUCKET, load.state.accepted,
                       receiver.snapshot(), load.state.subscribed, {key["id"]: key["webhook_secret"]},
                       wall_seconds=time.monotonic() - started)
        report.worker_restarts = sum(v for k, v in stack.restarts.items() if k.startswith("worker"))
        print(report.table(f"soak: {report.accepted} jobs, {args.workers} workers, chaos every {args.every:.0f}s"))
        print("chaos:", ", ".join(chaos_log))
        print(f"webhook outbox drained: {drained}; deliveries retried after a failed attempt: "
              f"{_retried_events(engine)}")
        print("API answers:", dict(sorted(load.state.status_counts.items())),
              "5xx:", len(load.state.server_errors))
        return 0 if report.ok and report.lost == 0 and report.duplicated == 0 else 1
    finally:
        stop.set()
        stack.close()
        receiver.close()


def wait_outbox_drained(engine: sa.Engine, timeout: float) -> bool:
    """Wait until no subscribed event is pending delivery (progress events are never retried)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            pending = conn.execute(sa.text("select count(*) from webhook_events where status = 'pending' "
                                           "and event_type <> 'job.progress'")).scalar_one()
        if pending == 0:
            return True
        time.sleep(5)
    return False


def _retried_events(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from webhook_events where attempts > 1")).scalar_one()


def _tiny_checkpoint(path: Path) -> Path:
    from model.testing import write_tiny_checkpoint

    path.mkdir(parents=True, exist_ok=True)
    return write_tiny_checkpoint(path)


if __name__ == "__main__":
    sys.exit(main())
