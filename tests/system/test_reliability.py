"""The reliability suite: the whole stack as processes under load, crashes, restarts and hostile input.

Each scenario drives the running stack through the API with a load generator, does something bad to it, and
ends with the invariant check of `bench.invariants` (every accepted job terminal, exactly its result objects, no
orphans, subscribed webhooks delivered under a stable id). Bounded for CI: a few hundred tiny jobs in all;
`bench/soak.py` runs the long form.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time

import httpx
import pytest
import sqlalchemy as sa

from bench.invariants import check, s3_client, wait_all_terminal
from bench.loadgen import LoadConfig, LoadGenerator
from bench.stack import wait_until
from tests.support.streams import EventFollower
from tests.system.conftest import create_key

pytestmark = pytest.mark.system

SETTLE_TIMEOUT = 150.0


def run_scenario(system, name: str, action=None, submissions: int = 24, rate: float = 6.0, **load_kw):
    """Given load of `submissions` requests, when `action(stack)` runs midway, then every invariant holds."""
    stack, receiver, keys, engine = system["stack"], system["receiver"], system["keys"], system["engine"]
    load = LoadGenerator(stack.api_url, keys[0]["key"], LoadConfig(webhook_url=receiver.url, **load_kw),
                         seed=hash(name) % 10_000)
    started = time.monotonic()
    load.start(threads=2, rate=rate, limit=submissions)
    if action is not None:
        action(stack, load)
    load.wait()
    wait_all_terminal(engine, load.state.accepted, SETTLE_TIMEOUT)
    # webhooks for the last jobs may still be in flight: give the dispatcher a moment
    try:
        wait_until(lambda: _webhooks_settled(engine, load.state.accepted), 60, "webhook outbox to drain")
    except TimeoutError:
        print(_outbox_diagnosis(engine, stack, load.state.accepted))
        raise
    report = check(engine, system["s3"], stack.BUCKET, load.state.accepted, receiver.snapshot(),
                   load.state.subscribed, {keys[0]["id"]: keys[0]["webhook_secret"]},
                   wall_seconds=time.monotonic() - started)
    report.worker_restarts = sum(v for k, v in stack.restarts.items() if k.startswith("worker"))
    print("\n" + report.table(f"scenario: {name}"))
    assert not load.state.server_errors, load.state.server_errors[:5]
    assert report.accepted >= submissions // 2, "too few jobs were accepted to judge the scenario"
    assert report.ok, report.table(name)
    return report, load


def _webhooks_settled(engine: sa.Engine, job_ids: list[str]) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "select count(*) from webhook_events where status = 'pending' and event_type <> 'job.progress' "
            "and (job_id = any(:ids) or job_id is null)"), {"ids": job_ids}).scalar_one() == 0


def _outbox_diagnosis(engine: sa.Engine, stack, job_ids: list[str]) -> str:
    """What a drain that timed out left pending (with each event's last attempt) and what the dispatching services
    logged last: the stack's logs live in a temporary folder a CI run does not keep."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "select e.id, e.event_type, e.job_id, e.batch_id, e.attempts, e.next_attempt_at, now() as db_now, "
            "(select coalesce(a.status_code::text, '-') || ' ' || coalesce(a.error, '') from webhook_attempts a "
            " where a.event_id = e.id order by a.attempt desc limit 1) as last_attempt "
            "from webhook_events e where e.status = 'pending' and e.event_type <> 'job.progress' "
            "and (e.job_id = any(:ids) or e.job_id is null) order by e.created_at limit 20"), {"ids": job_ids}).all()
    lines = ["pending outbox events:", *(f"  {dict(r._mapping)}" for r in rows)]
    for name in ("webhooks", "beat"):
        svc = stack.services[name]
        lines += [f"--- {name} (alive: {svc.alive}) ---", svc.log_tail(40)]
    return "\n".join(lines)


def _running_on(engine: sa.Engine, worker_id: str) -> int:
    """Jobs running on one worker process (its id: `<name>:<pid>`; a killed process's jobs stay running under its
    id until their leases expire, so a name alone would also find the process killed before)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from jobs where status = 'running' and worker_id = :w"),
                            {"w": worker_id}).scalar_one()


def test_steady_mixed_load(system):
    report, load = run_scenario(system, "steady mixed load", submissions=30)
    assert report.succeeded == report.accepted
    assert load.state.batches, "the load included batch submissions"


def test_sigkill_worker_mid_batch_twice(system):
    def kill_twice(stack, load):
        engine = system["engine"]
        name = "worker-0"
        prefix = stack.services[name].argv[stack.services[name].argv.index("--name") + 1]
        extra = itertools.count(200_000)
        with httpx.Client() as http:
            for _ in range(2):
                process = f"{prefix}:{stack.services[name].proc.pid}"  # this start of it, not the one killed before

                def on_it(process: str = process) -> bool:
                    if _running_on(engine, process):
                        return True
                    if not _queued(engine):  # the other worker may have taken all of the load: keep one job
                        load.submit_one(http, next(extra))  # queued until this process takes one
                    return False

                wait_until(on_it, 120, f"a batch running on {name}", interval=0.05)
                stack.restart_service(name, signal.SIGKILL)

    report, _ = run_scenario(system, "SIGKILL a worker mid-batch, twice", kill_twice, submissions=30)
    assert report.succeeded == report.accepted
    assert report.attempts_over_one >= 1, "the killed batches were retried (attempts recorded)"


def test_redis_restarted_and_flushed_under_load(system):
    def restart_redis(stack, load):
        time.sleep(2)
        stack.redis.restart(down_seconds=1.0)  # no persistence: every queued message is gone

    report, _ = run_scenario(system, "Redis restarted (and flushed) under load", restart_redis, submissions=24)
    assert report.succeeded == report.accepted


def test_postgres_restarted_under_load(system):
    seen: dict[int, int] = {}
    missing_retry_after: list[int] = []

    def restart_postgres(stack, load):
        time.sleep(2)
        stack.pg.stop()
        key = system["keys"][0]["key"]
        deadline = time.monotonic() + 4
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            while time.monotonic() < deadline:  # while the database is down the API answers 503, never 500
                for resp in (client.get(f"{stack.api_url}/v1/jobs"),
                             client.post(f"{stack.api_url}/v1/jobs", json=load.job_body(999_999))):
                    seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                    if resp.status_code == 503 and "retry-after" not in resp.headers:
                        missing_retry_after.append(resp.status_code)
                time.sleep(0.2)
        stack.pg._pg_ctl("start")
        wait_until(stack.pg._ready, 30, "postgres back")

    report, _ = run_scenario(system, "Postgres restarted under load", restart_postgres, submissions=24)
    assert seen.get(503), f"the API answered 503 while the database was down: {seen}"
    assert not any(code >= 500 and code != 503 for code in seen), seen
    assert not missing_retry_after
    assert report.succeeded == report.accepted


def test_webhook_receiver_down_then_back(system):
    receiver = system["receiver"]

    def receiver_outage(stack, load):
        time.sleep(1)
        receiver.down()
        time.sleep(3)  # shorter than the first retry delay (5 s): the retry finds it back
        receiver.up()

    report, _ = run_scenario(system, "webhook receiver down, then back", receiver_outage, submissions=20)
    assert report.webhook_events_missing == 0


def test_graceful_rolling_restart_of_workers(system):
    def rolling_restart(stack, load):
        for name in [n for n in stack.services if n.startswith("worker")]:
            time.sleep(2)
            stack.restart_service(name, signal.SIGTERM)

    report, _ = run_scenario(system, "graceful rolling restart of workers", rolling_restart, submissions=24)
    assert report.succeeded == report.accepted


def test_api_redeployed_under_load_with_clients_waiting(system):
    from unipic_client import Client

    stack = system["stack"]
    key = system["keys"][0]["key"]
    waited: dict[str, object] = {}

    def redeploy_api(stack, load):
        # Given a job far longer than the scenario (canceled by its owner after the redeploy), a client waiting
        # for it through the SDK and another following its events, while the load runs
        client = Client(stack.api_url, key)
        job = client.submit({"kind": "generate", "prompt": "a long one", "width": 1024, "height": 1024,
                             "steps": 128})
        follower = EventFollower(f"{stack.api_url}/v1/jobs/{job.id}/events", key)
        waiter = threading.Thread(target=lambda: waited.update(job=client.wait(job, timeout=SETTLE_TIMEOUT)),
                                  daemon=True)
        waiter.start()
        wait_until(follower.opened.is_set, 60, "the event stream to open")
        wait_until(lambda: len(load.state.accepted) >= 4, 60, "some of the load accepted")
        # When the API is redeployed: SIGTERM, then a new process; then the owner cancels the long job
        stack.restart_service("api", signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{stack.api_url}/readyz", timeout=2).status_code == 200, 60, "the new API")
        follower.thread.join(30)
        waited["stream"] = follower.ended
        client.cancel_job(job.id)
        waiter.join(SETTLE_TIMEOUT)

    report, _ = run_scenario(system, "API redeployed under load", redeploy_api, submissions=24)
    # Then nothing accepted is lost; the old process stopped by itself although the long job's stream was open
    # (it closed the stream cleanly; killed at the end of its grace it would have cut it); and the SDK's wait
    # went on across the restart to the job's end
    assert report.succeeded == report.accepted
    assert stack.services["api"].stops[-1] in (0, -signal.SIGTERM), stack.services["api"].log_tail()  # uvicorn
    # re-raises the SIGTERM it handled once it has stopped; None would mean it was killed
    assert waited["stream"] == "cleanly", waited
    assert getattr(waited.get("job"), "status", None) == "canceled", waited



def test_gateway_worker_sigkilled_mid_batch_and_cut_mid_upload(system):
    stack, engine = system["stack"], system["engine"]
    # Given a gateway worker (slow steps, so a batch is on it for a while) among the Celery workers
    name = "gw-reliability"
    stack.add_gateway_worker(name, UNIPIC_FAULT_STEP_DELAY_MS="250")
    wait_until(lambda: _remote_worker_ready(engine, name), 180, "the gateway worker to register")
    killed: dict[str, str] = {}

    stack.s3_proxy.cut_request(b"PUT ")  # its first upload breaks mid-body (only gateway workers use the URLs)

    def cut_then_kill(stack, load):
        # When its connection is cut mid-upload, and later it is SIGKILLed mid-batch (its supervisor restarts it)
        extra = itertools.count(100_000)
        with httpx.Client() as http:

            def cut() -> bool:
                done = stack.s3_proxy.cut_done.is_set()
                if not done and not _queued(engine):  # the Celery workers may have taken all of the load: keep one
                    load.submit_one(http, next(extra))  # job queued until the gateway worker takes one and uploads
                return done

            wait_until(cut, 60, "an upload of the gateway worker to be cut", interval=0.05)
            # (a continuous worker finishes results in the background while it takes new work: the cut upload's
            # retry completes before the kill)
            wait_until(lambda: _finished_on(engine, name), 60, "the gateway worker to finish a job")

            def early_batch() -> dict[str, str]:
                leases = _leases_on(engine, name, early=True)
                if not leases and not _queued(engine):  # the load may be over: keep one job queued until the
                    load.submit_one(http, next(extra))  # gateway worker takes a batch (its jobs are checked too)
                return leases

            wait_until(early_batch, 60, "a batch early on the gateway worker", interval=0.05)
        stack.restart_service(name, signal.SIGKILL)
        killed.update(_leases_on(engine, name))  # what it held when it died: no write of its can follow

    try:
        report, load = run_scenario(system, "gateway worker cut mid-upload, SIGKILLed mid-batch", cut_then_kill,
                                    submissions=24, rate=3.0, steps=4)
    finally:
        stack.services.pop(name).stop(timeout=10)
    # Then nothing is lost or duplicated, no served key was written by a worker without the lease, and the
    # killed batch's jobs serve the results of the lease that completed them, not the killed one's
    assert report.succeeded == report.accepted and report.served_key_foreign_writes == 0
    assert killed and report.attempts_over_one >= 1
    with engine.connect() as conn:
        served = dict(conn.execute(sa.text("select id, result_keys from jobs where id = any(:ids)"),
                                   {"ids": list(killed)}).all())
        remote = conn.execute(sa.text("select count(*) from jobs where id = any(:ids) and worker_id like :w"),
                              {"ids": load.state.accepted, "w": f"%{name}%"}).scalar_one()
    assert all(keys and all(f"/{lease}/" not in k for k in keys) for job, lease in killed.items()
               for keys in [served[job]])
    assert remote >= 1, "the gateway worker finished jobs (the one whose upload was cut among them)"


def _queued(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from jobs where status = 'queued'")).scalar_one())


def _finished_on(engine: sa.Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("select count(*) from jobs where status = 'succeeded' and worker_id like :w"),
                                 {"w": f"%{name}%"}).scalar_one())


def _remote_worker_ready(engine: sa.Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("select count(*) from workers where transport = 'remote' and id like :w "
                                         "and stopped_at is null"), {"w": f"%{name}%"}).scalar_one())


def _leases_on(engine: sa.Engine, worker_prefix: str, early: bool = False) -> dict[str, str]:
    """Job id -> lease token of the jobs running on a worker (`early`: at most one of their steps done)."""
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "select id, lease_token from jobs where status = 'running' and worker_id like :w "
            "and (not :early or coalesce(progress_step, 0) <= 1)"), {"w": f"%{worker_prefix}%", "early": early}).all())


def test_hostile_input(system):
    from bench.hostile import run_hostile

    stack, keys = system["stack"], system["keys"]
    outcome = run_hostile(stack.api_url, keys[0]["key"], keys[1]["key"], burst=80)
    print("\n" + outcome.table())
    assert not outcome.server_errors, outcome.server_errors[:10]
    assert not outcome.unexpected, outcome.unexpected[:10]
    assert outcome.rate_limited > 0, "a burst over the rate limit was answered 429"
    # and the hostile traffic did not disturb honest work
    report, _ = run_scenario(system, "honest load after hostile input", submissions=12)
    assert report.succeeded == report.accepted


@pytest.fixture(scope="module")
def system(bench_stack):
    """The package's stack (tests/system/conftest.py), two keys of this module, a webhook receiver."""
    from bench.receiver import WebhookReceiver

    # tenant-b has a small per-key rate limit, so the hostile burst meets it
    keys = [create_key(bench_stack, "tenant-a", "--rate-limit", "100000"),
            create_key(bench_stack, "tenant-b", "--rate-limit", "40")]
    receiver = WebhookReceiver()
    engine = sa.create_engine(bench_stack.pg.url, pool_pre_ping=True)
    s3 = s3_client(bench_stack.env()["UNIPIC_S3_ENDPOINT_URL"])
    try:
        yield {"stack": bench_stack, "receiver": receiver, "keys": keys, "engine": engine, "s3": s3}
    finally:
        engine.dispose()
        receiver.close()
