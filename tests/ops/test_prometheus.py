"""A real Prometheus scrapes a real `unipic up` stack; every dashboard and alert expression must return data.

One stack for the module (embedded mode, tiny model on CPU) with the model worker's and the CPU worker's
metrics ports on, and one `prometheus` process (Debian package) scraping the API, the worker and the CPU worker
every second with `deploy/alerts.yml` loaded. The stack is given work that exercises every metric: a job that
succeeds, one whose webhook receiver is down (its events stay pending, retried), and one for a queue no worker
serves (`.xl`: it stays queued). Then every expression of `deploy/grafana/unipic-queue.json` and of the alert
rules is queried through Prometheus' HTTP API: a panel that queries a metric nobody exports fails. GPU-only
series (NVML) have no samples on a CPU machine: for those the metric must at least be declared by a target.
The alert expressions with their thresholds lowered to 0 must fire for the queue nobody serves and for the
webhook backlog (asserted on the PromQL result, polling, never sleeping a fixed time).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import REPO
from tests.support.stack import Stack, free_port, start_stack

pytestmark = pytest.mark.system

DASHBOARD = REPO / "deploy" / "grafana" / "unipic-queue.json"
ALERTS = REPO / "deploy" / "alerts.yml"
WAIT_S = 120.0
# series that only a worker with an NVIDIA driver has samples for (declared, empty, on a CPU machine)
GPU_ONLY = {"unipic_worker_gpu_memory_used_bytes", "unipic_worker_gpu_memory_total_bytes",
            "unipic_worker_gpu_utilization_ratio"}
METRIC_NAME = re.compile(r"\b(unipic_[a-z0-9_]+|up)\b")
THRESHOLD = re.compile(r">\s*[0-9.]+(e-?[0-9]+)?")


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `apt-get install prometheus` (.ci/run installs it)"
    return path


class Prometheus:
    """A prometheus process on a free loopback port, and its query API."""

    def __init__(self, config: dict[str, Any], root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = root / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [_binary("prometheus"), f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def declared(self, metric: str) -> bool:
        """Some target exported this metric family (HELP/TYPE), samples or not."""
        return bool(self.api("targets/metadata", metric=metric))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(what: str, check: Callable[[], Any], diagnose: Callable[[], str], timeout: float = WAIT_S) -> Any:
    """Poll `check` until it returns something truthy; fail with `diagnose()` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{diagnose()}", pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ops_stack() -> Iterator[tuple[Stack, int, int]]:
    root = Path(tempfile.mkdtemp(prefix="unipic-ops-"))
    worker_port, cpu_port = free_port(), free_port()
    stack = start_stack(root, extra_env={
        "UNIPIC_WORKER_METRICS_PORT": str(worker_port), "UNIPIC_CPU_METRICS_PORT": str(cpu_port),
        "UNIPIC_WEBHOOK_ALLOWLIST": "127.0.0.0/8", "UNIPIC_WEBHOOK_ALLOW_HTTP": "true",
    })
    try:
        yield stack, worker_port, cpu_port
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(ops_stack: tuple[Stack, int, int]) -> Iterator[Prometheus]:
    stack, worker_port, cpu_port = ops_stack
    root = Path(tempfile.mkdtemp(prefix="unipic-prom-"))
    api_target = stack.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "unipic-api", "static_configs": [{"targets": [api_target]}]},
            {"job_name": "unipic-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            {"job_name": "unipic-cpu", "static_configs": [{"targets": [f"127.0.0.1:{cpu_port}"]}]},
        ],
    }
    prom = Prometheus(config, root)
    try:
        wait_for("Prometheus to scrape every target", lambda: _all_targets_up(prom),
                 lambda: f"{prom.log()[-4000:]}\n{stack.log()[-4000:]}")
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(root, ignore_errors=True)


def _all_targets_up(prom: Prometheus) -> bool:
    if prom.proc.poll() is not None:
        pytest.fail(f"prometheus exited:\n{prom.log()}", pytrace=False)
    active = prom.api("targets")["activeTargets"]
    return len(active) == 3 and all(t["health"] == "up" for t in active)


@pytest.fixture(scope="module")
def worked(ops_stack: tuple[Stack, int, int], prometheus: Prometheus) -> Stack:
    """The stack after it did the work that feeds every metric (see the module docstring)."""
    stack = ops_stack[0]
    headers = {"Authorization": f"Bearer {stack.key}"}
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: deliveries fail and are retried

    def submit(**body: Any) -> str:
        answer = httpx.post(f"{stack.url}/v1/jobs", headers=headers, timeout=30, json={
            "kind": "generate", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, **body})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    served = submit(webhook_url=closed)
    submit(width=2048, height=2048)  # the `.xl` queue: no worker serves it in this stack

    def finished() -> bool:
        status = httpx.get(f"{stack.url}/v1/jobs/{served}", headers=headers, timeout=10).json()["status"]
        assert status in ("queued", "running", "succeeded"), status
        return status == "succeeded"

    wait_for("the served job to succeed", finished, stack.log)
    return stack


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _gpu_only(expr: str) -> bool:
    return bool(set(METRIC_NAME.findall(expr)) & GPU_ONLY)


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run([_binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_expression_returns_data(worked: Stack, prometheus: Prometheus) -> None:
    exprs = _dashboard_exprs()
    assert exprs
    for expr in exprs:
        if _gpu_only(expr):
            prometheus.query(expr)  # valid PromQL; NVML series are declared below
            continue
        wait_for(f"data for the panel query {expr!r}", lambda e=expr: prometheus.query(e),  # type: ignore[misc]
                 lambda: worked.log()[-3000:])
    for metric in GPU_ONLY:
        assert prometheus.declared(metric), f"no target exports {metric}"


def test_every_alert_expression_is_valid_and_its_metrics_are_exported(worked: Stack, prometheus: Prometheus) -> None:
    for rule in _alert_rules():
        prometheus.query(rule["expr"])  # a syntax or type error fails here (status != success)
        for metric in set(METRIC_NAME.findall(rule["expr"])):
            if metric in GPU_ONLY:
                assert prometheus.declared(metric), metric
            else:
                wait_for(f"series of {metric} (alert {rule['alert']})", lambda m=metric: prometheus.query(m),  # type: ignore[misc]
                         lambda: worked.log()[-3000:])
    loaded = {r["name"] for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert loaded == {r["alert"] for r in _alert_rules()}


def _lowered(alert: str) -> str:
    rule = next(r for r in _alert_rules() if r["alert"] == alert)
    return THRESHOLD.sub("> 0", rule["expr"])


def test_queue_alerts_fire_for_a_queue_with_work_and_no_worker(worked: Stack, prometheus: Prometheus) -> None:
    # Given a job queued where no live worker subscribes (.xl), When the alert expressions are evaluated
    def fired(alert: str) -> set[str]:
        return {s["metric"].get("queue", "") for s in prometheus.query(_lowered(alert))}

    # Then both name that queue, and the served queue is not reported as lacking a worker
    wait_for("UnipicNoWorkerForQueue on unipic.generate.xl",
             lambda: "unipic.generate.xl" in fired("UnipicNoWorkerForQueue"), lambda: worked.log()[-3000:])
    wait_for("UnipicQueueTooOld on unipic.generate.xl",
             lambda: "unipic.generate.xl" in fired("UnipicQueueTooOld"), lambda: worked.log()[-3000:])
    assert "unipic.generate.s" not in fired("UnipicNoWorkerForQueue")


def test_webhook_alert_fires_while_the_receiver_is_down(worked: Stack, prometheus: Prometheus) -> None:
    wait_for("UnipicWebhookOldestPending with a receiver down",
             lambda: prometheus.query(_lowered("UnipicWebhookOldestPending")), lambda: worked.log()[-3000:])
    wait_for("retried deliveries counted",
             lambda: prometheus.query('unipic_webhook_deliveries_total{outcome="retry"} > 0'),
             lambda: worked.log()[-3000:])


def test_the_console_stays_quiet_and_the_first_key_is_kept_in_a_private_file(worked: Stack) -> None:
    log = worked.log()
    # periodic ticks and no-op messages are not on the console at the default level
    for chatter in ("Sending due task", "succeeded in", "Received task", '"GET /'):
        assert chatter not in log, chatter
    assert re.search(r"batch of 1 generate:64:\S+ finished in", log), log[-3000:]
    key_file = worked.data_dir / "first-api-key"
    assert key_file.read_text().strip() == worked.key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert str(key_file) in log


def _chromium_dom(url: str) -> str:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("headless Chromium is required (apt-get install chromium; .ci/run installs it)", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--virtual-time-budget=3000", "--dump-dom", url],
            capture_output=True, text=True, check=False, timeout=90)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_status_page_charts_the_last_hour_and_names_the_failing_webhook_endpoint(worked: Stack) -> None:
    # Given the stack after a job succeeded whose webhook receiver is down
    def failing_row() -> str | None:
        html = httpx.get(f"{worked.url}/ui", cookies={"unipic_ui_key": worked.key}, timeout=10).text
        return html if 'class="failing-endpoint"' in html else None

    wait_for("a retried delivery to show on the page", failing_row, lambda: worked.log()[-3000:])
    # When Chromium renders the signed-in page
    dom = _chromium_dom(f"{worked.url}/ui?key={worked.key}")
    # Then the last hour is drawn as inline SVG (no script, no CDN) with the succeeded job in it
    activity = re.search(r'<div id="activity" data-succeeded="(\d+)" data-failed="(\d+)"', dom)
    assert activity and int(activity.group(1)) >= 1, dom[:3000]
    assert dom.count("<svg") >= 2 and 'class="ok"' in dom and "<polyline" in dom
    assert "<script" not in dom
    # And the webhook panel shows the backlog and the failing endpoint with its last error
    backlog = re.search(r'id="webhook-backlog" data-backlog="(\d+)"', dom)
    assert backlog and int(backlog.group(1)) >= 1
    row = re.search(r'<tr class="failing-endpoint" data-url="([^"]+)">(.*?)</tr>', dom, re.DOTALL)
    assert row and row.group(1).startswith("http://127.0.0.1:"), dom[:3000]
    assert "status-failed" in row.group(2) and re.search(r"[A-Za-z]", row.group(2).split("status-failed")[1])


def test_every_gpu_scaling_query_of_deploy_k8s_returns_a_number(worked: Stack, prometheus: Prometheus) -> None:
    """The KEDA ScaledObjects' and the HPA overlay's prometheus-adapter queries (tests/ops/test_k8s.py renders
    them): each returns exactly one number, and the `.xl` group's see the job that waits there (the group would
    wake from zero) while the served group's queue is drained."""
    from tests.ops.test_k8s import scaling_queries

    def value(expr: str) -> float | None:
        result = prometheus.query(expr)
        assert len(result) <= 1, (expr, result)  # one number, not a series per pod or queue
        return float(result[0]["value"][1]) if result else None

    queries = scaling_queries()
    assert len(queries) == 8
    for expr in queries:
        wait_for(f"a number from {expr!r}", lambda e=expr: value(e) is not None,  # type: ignore[misc]
                 lambda: worked.log()[-3000:])
        if ".]xl" in expr:  # the stuck `.xl` job: one queued, waiting for longer than 0 s
            wait_for(f"{expr!r} > 0", lambda e=expr: (value(e) or 0) > 0,  # type: ignore[misc]
                     lambda: worked.log()[-3000:])
