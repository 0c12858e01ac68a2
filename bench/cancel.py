"""Cancel latency of a running item under continuous batching, and whether its row is reused (issue 25).

An in-process `workers.runner.continuous.ContinuousRunner` (the real store in a private Postgres schema, the
real object store, the tiny model on CPU) serves, on a thread, a backlog of `--rows` + 1 compatible jobs
(`--steps` steps at `--size` px): `--rows` fill its running set and one waits in the queue. Once the set has
taken half its steps, one running item is canceled through `JobStore.request_cancel` (what the API calls; its
commit sends the cancel hint on Redis, as the API's does, which the worker reads the request on).
Per repeat, each on a fresh backlog:
- steps: step calls of the set that ended after the request and before the item was dropped (the step in
  flight counts; target <= 1). The request commits somewhere inside its own call, so two counts bound it:
  from when it was sent (at most one too many) and from when it returned (at most one too few);
- ms: from sending the request to the job's `finished_at` as `canceled` (and the request's own duration);
- row reused: the queued job was admitted after the drop and before the next step, which ran with every row
  live.

With `--transport gateway` the runner reaches the jobs through the worker gateway instead (the API app served on
a loopback port in this process, a worker token, `GatewayJobs`): it hears the cancel through its cancel long-poll.

    python -m bench.cancel [--repeats 10] [--rows 8] [--steps 16] [--size 128] [--storage s3|local]
                           [--transport direct|gateway]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from bench.pipeline import create_job, make_runner, new_owner
from bench.stack import free_port, wait_until
from bench.timed import SetEvent, TimedEngine


def _analyse(events: list[SetEvent], victim: str, waiting: str, sent: float, returned: float, rows: int
             ) -> dict[str, Any]:
    drop = next(e for e in events if e.what == "drop" and victim in e.ids)
    steps = [e for e in events if e.what == "step"]
    before = [e for e in steps if e.end <= sent]
    nxt = next((e for e in steps if e.start >= drop.end), None)
    admitted = any(e.what == "admit" and waiting in e.ids and drop.end <= e.start
                   and (nxt is None or e.end <= nxt.start) for e in events)
    return {"steps_from_sent": sum(sent < e.end <= drop.start for e in steps),
            "steps_from_returned": sum(returned < e.end <= drop.start for e in steps),
            "victim_was_live": bool(before) and victim in before[-1].live,
            "row_reused": admitted and nxt is not None and len(nxt.live) == rows,
            "step_ms_p50": round(1000 * statistics.median(e.end - e.start for e in steps), 1)}


def one_cancel(store: Any, runner: Any, timed: TimedEngine, owner_id: str, args: argparse.Namespace, r: int
               ) -> dict[str, Any]:
    from storage.states import JobStatus

    jobs = [create_job(store, owner_id, args.size, args.steps, 10_000 * r + i) for i in range(args.rows + 1)]
    victim, waiting = jobs[r % args.rows], jobs[-1]  # the oldest `rows` fill the set; the last one waits
    timed.clear()
    served: list[int] = []
    thread = threading.Thread(target=lambda: served.append(runner.run(jobs[0])), name="bench-runner")
    thread.start()
    wait_until(lambda: timed.steps() >= args.steps // 2, 300, "the set to take half its steps", interval=0.002)
    requested_at, sent = datetime.now(UTC), time.perf_counter()
    store.request_cancel(victim, None)
    returned = time.perf_counter()
    thread.join(600)
    runner.drain()
    done = {j.id: j for j in store.get_many(jobs)}
    assert served == [len(jobs)], served
    assert done[victim].status == JobStatus.CANCELED, done[victim]
    assert all(j.status == JobStatus.SUCCEEDED for i, j in done.items() if i != victim), done
    out = _analyse(list(timed.events), victim, waiting, sent, returned, args.rows)
    finished_at = done[victim].finished_at
    assert finished_at is not None
    out["ms"] = round(1000 * (finished_at - requested_at).total_seconds(), 1)
    out["request_ms"] = round(1000 * (returned - sent), 1)
    return out


@contextmanager
def served_api(settings: Any) -> Iterator[str]:
    """The API app (`settings`) served by uvicorn on a loopback port in a thread; its base URL."""
    import uvicorn

    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 60, "the API to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def gateway_runner(url: str, store: Any, stack: Any, engine: TimedEngine, rows: int) -> Any:
    """A continuous runner whose transport is the worker gateway at `url` (a fresh worker token)."""
    from storage.fleet.tokens import WorkerTokenStore
    from workers.metrics import WorkerMetrics
    from workers.runner.continuous import ContinuousRunner
    from workers.shutdown import ShutdownGate
    from workers.transport.gateway_client import GatewayHttp, GatewayJobs, GatewayObjects

    _, token = WorkerTokenStore(store.sessions).create("bench-cancel")
    jobs = GatewayJobs(GatewayHttp(url, token), GatewayObjects(), "bench-cancel:1")
    settings = stack.settings.model_copy(update={"worker_max_batch": rows, "progress_interval_ms": 250,
                                                 "worker_batching": "continuous"})
    return ContinuousRunner(store=jobs, objects=jobs.objects, engine=engine, settings=settings,
                            worker_id="bench-cancel:1", metrics=WorkerMetrics(), shutdown=ShutdownGate(30.0),
                            enqueue=lambda jobs: None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import bench.worker as worker_bench
    from model.inference import load_engine
    from storage.db import make_engine, make_session_factory
    from storage.jobs.events import attach_from_settings
    from storage.jobs.store import JobStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--storage", choices=["s3", "local"], default="s3")
    ap.add_argument("--transport", choices=["direct", "gateway"], default="direct")
    args = ap.parse_args(argv)
    if args.transport == "gateway" and args.storage != "s3":
        ap.error("--transport gateway needs --storage s3 (presigned URLs)")
    timed = TimedEngine(load_engine("tiny"))
    worker_bench.REDIS = worker_bench.REDIS or worker_bench.free_redis_db()  # Stack flushes its own db
    with worker_bench.Stack(args.storage) as stack:
        sessions = make_session_factory(make_engine(stack.settings))
        attach_from_settings(sessions, stack.settings)  # the cancel's hint goes out on Redis, as the API's does
        store = JobStore(sessions)
        owner_id = new_owner(store.sessions)
        with served_api(stack.settings) if args.transport == "gateway" else nullcontext("") as url:
            runner = gateway_runner(url, store, stack, timed, args.rows) if url else \
                make_runner(stack, store, timed, "continuous", args.rows)
            warm = [create_job(store, owner_id, args.size, 2, 10**6 + i) for i in range(args.rows)]
            runner.run(warm[0])  # warm-up (not counted)
            runs = [one_cancel(store, runner, timed, owner_id, args, r) for r in range(args.repeats)]
    def spread(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"p50": round(statistics.median(values), 1), "max": max(values)}

    report = {"transport": args.transport, "rows": args.rows, "steps": args.steps, "size": args.size,
              "repeats": len(runs),
              "latency_steps_from_sent": spread("steps_from_sent"),
              "latency_steps_from_returned": spread("steps_from_returned"),
              "latency_ms": spread("ms"), "request_ms": spread("request_ms"),
              "step_ms_p50": round(statistics.median(r["step_ms_p50"] for r in runs), 1),
              "rows_reused": sum(r["row_reused"] for r in runs),
              "victim_was_live": sum(r["victim_was_live"] for r in runs), "runs": runs,
              "targets": {"latency_steps_max": 1}}
    print(f"{'cancel latency':36}{'p50':>8}{'max':>8}")
    for label, key in (("  steps, from the request sent", "latency_steps_from_sent"),
                       ("  steps, from the request returned", "latency_steps_from_returned"),
                       ("  ms, request sent -> canceled", "latency_ms"),
                       ("  (the request itself, ms)", "request_ms")):
        print(f"{label:36}{report[key]['p50']:>8}{report[key]['max']:>8}")
    print(f"step p50 {report['step_ms_p50']} ms; rows reused {report['rows_reused']}/{len(runs)}; "
          f"victim live at the request {report['victim_was_live']}/{len(runs)}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
