"""Soak run: thousands of jobs through the whole stack while scenarios 2-6 of the reliability suite interleave.

    python -m bench.soak --jobs 5000 --workers 2 --rate 20
    python -m bench.soak --jobs 300 --workers 1 --gateway-workers 2 --rate 3 --every 10

Starts private Postgres and Redis, the S3 HTTP server (versioning on: every write is a version), the API, model
workers (tiny model unless --model), the webhook worker and the sweeper as separate processes; submits `--jobs`
jobs with the load generator; every `--every` seconds does one of: SIGKILL a worker, restart Redis (losing its
data), restart Postgres, take the webhook receiver down for a few seconds, gracefully restart every worker in
turn. With `--gateway-workers N`, N remote workers (`unipic worker --gateway`, no credentials but a worker token)
run among the Celery workers, reaching the API and the bucket only through cutting proxies (`bench.proxy`), and
chaos also: SIGKILLs a gateway worker, cuts uploads mid-body, cuts every connection in flight (both directions),
drops a `complete` answer after the server acted, and takes their whole path down, briefly (retried through) or
for longer than a lease (their leases are lost and the jobs run elsewhere). Every `--cancel-every`-th single image
job runs long and is canceled through the API once it shows running (`bench.loadgen`): the summary says what became
of them and how long after the request each was canceled. Prints the report table (with the writes counted per
served result key) and exits non-zero if any job was lost or duplicated, any object was an orphan, any webhook went
undelivered, a canceled job kept results, a served key was written by a worker not holding the job's lease, or
any other invariant failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from bench.invariants import check, s3_client, wait_all_terminal
from bench.loadgen import CancelAsk, LoadConfig, LoadGenerator
from bench.receiver import WebhookReceiver
from bench.stack import ROOT, Stack, StackConfig

DIRECT_CHAOS = ["sigkill", "redis", "postgres", "receiver", "rolling", "api"]
GATEWAY_CHAOS = ["gw-sigkill", "cut-upload", "cut-all", "drop-complete", "outage", "gw-sigkill", "long-outage"]
OUTAGE_SECONDS = 3.0  # shorter than a lease: the gateway workers retry through it
SLOW_CANCEL = timedelta(seconds=1)  # a cancel slower than this is listed with its time, to match the chaos log
LONG_OUTAGE_FACTOR = 1.5  # leases: the gateway workers cannot prove theirs, stop writing, and the jobs run elsewhere


def chaos(stack: Stack, receiver: WebhookReceiver, every: float, stop: threading.Event, log: list[str]) -> None:
    workers = [n for n in stack.services if n.startswith("worker")]
    remote = [n for n in stack.services if n.startswith("gw-")]
    actions = itertools.cycle(_interleaved(DIRECT_CHAOS, GATEWAY_CHAOS if remote else []))
    while not stop.wait(every):
        action = next(actions)
        log.append(f"{time.strftime('%H:%M:%S')} {action}")
        if action.startswith(("gw-", "cut-", "drop-")) or action.endswith("outage"):
            gateway_chaos(stack, action, remote[len(log) % len(remote)])
        elif action == "sigkill":
            stack.restart_service(workers[len(log) % len(workers)], signal.SIGKILL)
        elif action == "redis":
            stack.redis.restart(down_seconds=1.0)
        elif action == "postgres":
            stack.pg.restart(down_seconds=2.0)
        elif action == "api":  # a deploy of the API: SIGTERM (held long-polls end at once), then a new process
            stopped = stack.restart_service("api", signal.SIGTERM)
            log[-1] += f" (stopped in {stopped:.1f} s)"
        elif action == "receiver":
            receiver.down()
            time.sleep(3)
            receiver.up()
        else:
            for name in workers + remote:
                stack.restart_service(name, signal.SIGTERM)


def gateway_chaos(stack: Stack, action: str, worker: str) -> None:
    """One fault on the gateway workers' side: the worker process, or its path to the API and the bucket. A
    SIGKILL or a lease-long outage waits (a little) for a batch on a gateway worker, so it lands mid-batch."""
    api, s3 = stack.api_proxy, stack.s3_proxy
    assert api is not None and s3 is not None
    if action in ("gw-sigkill", "long-outage"):
        _wait_for_remote_batch(stack, worker if action == "gw-sigkill" else "", timeout=stack.config.lease_seconds)
    if action == "gw-sigkill":
        stack.restart_service(worker, signal.SIGKILL)
    elif action == "cut-upload":  # the next two uploads to presigned URLs break mid-body
        s3.cut_request(b"PUT ", times=2)
    elif action == "cut-all":  # whatever is in flight, requests and answers, both proxies
        api.cut_all()
        s3.cut_all()
    elif action == "drop-complete":  # the server marks the job succeeded; the worker never hears it
        api.drop_response(b"POST /v1/worker/complete")
    else:
        api.down()
        s3.down()
        time.sleep(OUTAGE_SECONDS if action == "outage" else stack.config.lease_seconds * LONG_OUTAGE_FACTOR)
        api.up()
        s3.up()


def _wait_for_remote_batch(stack: Stack, worker: str, timeout: float) -> bool:
    """Whether a job is running on a gateway worker (named `worker`, or any) within `timeout` seconds."""
    engine = sa.create_engine(stack.pg.url, pool_pre_ping=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(sa.exc.OperationalError), engine.connect() as conn:
                if conn.execute(sa.text("select count(*) from jobs where status = 'running' and worker_id like :w"),
                                {"w": f"remote-%{worker}%"}).scalar_one():
                    return True
            time.sleep(0.05)
        return False
    finally:
        engine.dispose()


def _interleaved(first: list[str], second: list[str]) -> list[str]:
    out = []
    for i in range(max(len(first), len(second))):
        out += [*first[i:i + 1], *second[i:i + 1]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs to submit (every 10th submission is a batch)")
    parser.add_argument("--workers", type=int, default=2, help="Celery (direct) model workers")
    parser.add_argument("--gateway-workers", type=int, default=0,
                        help="remote model workers behind cutting proxies (chaos then cuts their path too)")
    parser.add_argument("--rate", type=float, default=20.0, help="submissions per second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between chaos actions")
    parser.add_argument("--model", default="", help="checkpoint dir (default: write a tiny one)")
    parser.add_argument("--settle", type=float, default=1800.0, help="seconds to wait for the backlog")
    parser.add_argument("--cancel-every", type=int, default=20,
                        help="every N-th single image job runs long and is canceled once running (0: none)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="unipic-soak-"))
    checkpoint = Path(args.model) if args.model else _tiny_checkpoint(root / "ckpt")
    stack = Stack(StackConfig(checkpoint=checkpoint, workers=args.workers, gateway_workers=args.gateway_workers,
                              s3_versioning=True), root / "stack")
    receiver = WebhookReceiver()
    stop = threading.Event()
    chaos_log: list[str] = []
    try:
        stack.start()
        key = json.loads(subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--name", "soak",
                                         "--json"], env=stack.env(), cwd=ROOT, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        config = LoadConfig(webhook_url=receiver.url, cancel_every=args.cancel_every)
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
        report.worker_restarts = sum(v for k, v in stack.restarts.items() if k.startswith(("worker", "gw-")))
        print(report.table(f"soak: {report.accepted} jobs, {args.workers} Celery + {args.gateway_workers} gateway "
                           f"workers, chaos every {args.every:.0f}s"))
        print("chaos:", ", ".join(chaos_log))
        if args.gateway_workers:
            print(gateway_summary(engine, stack, load.state.accepted))
        print(f"webhook outbox drained: {drained}; deliveries retried after a failed attempt: "
              f"{_retried_events(engine)}")
        cancels_ok = True
        if args.cancel_every:
            summary, cancels_ok = cancel_summary(engine, load.state.cancels)
            print(summary)
        print("API answers:", dict(sorted(load.state.status_counts.items())),
              "5xx:", len(load.state.server_errors))
        return 0 if report.ok and report.lost == 0 and report.duplicated == 0 and cancels_ok else 1
    finally:
        stop.set()
        stack.close()
        receiver.close()


def gateway_summary(engine: sa.Engine, stack: Stack, job_ids: list[str]) -> str:
    """Who finished the jobs, and what the proxies did to the gateway workers' path."""
    with engine.connect() as conn:
        remote = conn.execute(sa.text("select count(*) from jobs where id = any(:ids) and status = 'succeeded' "
                                      "and worker_id like 'remote-%'"), {"ids": job_ids}).scalar_one()
    api, s3 = stack.api_proxy, stack.s3_proxy
    assert api is not None and s3 is not None
    return (f"succeeded on gateway workers: {remote}; connections cut (API / S3 path): {api.connections_cut} / "
            f"{s3.connections_cut}; refused during outages: {api.refused} / {s3.refused}; complete answers "
            f"dropped: {api.responses_dropped}")


def cancel_summary(engine: sa.Engine, asks: list[CancelAsk]) -> tuple[str, bool]:
    """What became of the jobs canceled while running: canceled (and how long after the request, by the job's
    `finished_at`), or succeeded (the request came after its last step), or anything else (listed)."""
    running = {a.job_id: a for a in asks if a.status_code == 200 and a.status == "running"}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select id, status, finished_at, result_keys, worker_id from jobs "
                                    "where id = any(:ids)"), {"ids": list(running)}).all()
    by_status = collections.Counter(r.status for r in rows)
    latencies = sorted(1000 * (r.finished_at - running[r.id].asked_at).total_seconds()
                       for r in rows if r.status == "canceled" and r.finished_at is not None)
    kept_results = [r.id for r in rows if r.status == "canceled" and r.result_keys]
    # a request that came after the job's last step began cannot stop it: the worker, and when it finished
    late = [f"{r.worker_id} +{1000 * (r.finished_at - running[r.id].asked_at).total_seconds():.0f} ms"
            for r in rows if r.status == "succeeded" and r.finished_at is not None]
    spread = (f"request -> canceled p50 {statistics.median(latencies):.0f} ms, max {latencies[-1]:.0f} ms"
              if latencies else "none canceled")
    # the slow ones, by the time they were asked (local clock, as the chaos log) and the worker: beside which chaos
    slow = sorted((running[r.id].asked_at, r) for r in rows if r.status == "canceled" and r.finished_at is not None
                  and r.finished_at - running[r.id].asked_at > SLOW_CANCEL)
    for asked, r in slow:
        spread += (f"; slow: asked {asked.astimezone().strftime('%H:%M:%S.%f')[:-3]} on {r.worker_id} "
                   f"+{1000 * (r.finished_at - asked).total_seconds():.0f} ms")
    return (f"cancels: {len(asks)} long jobs; asked while running: {len(running)} -> {dict(by_status)} "
            f"({spread}); finished before the ask: {sum(a.status_code is None for a in asks)}; "
            f"canceled with results: {len(kept_results)}; succeeded after the ask: {late}"), not kept_results


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
