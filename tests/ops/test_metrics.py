"""The metrics each process exports: the API's fleet gauges, the model worker's and the CPU worker's collectors."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from storage.jobs.ids import new_id
from storage.routing import SWEEP_TASK
from tests.support.storage import job
from workers.cpu_metrics import CpuMetrics
from workers.device.nvml import Nvml
from workers.metrics import WorkerMetrics, job_labels
from workers.sweeper import SweepReport


def _sample(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"{prefix} not exported"
    return float(lines[0].rsplit(" ", 1)[1])


def test_api_exports_per_queue_depth_age_running_workers_and_webhook_backlog(ops_client: Any) -> None:
    text = ops_client.get("/metrics").text
    for family in ("unipic_queue_jobs", "unipic_queue_oldest_age_seconds", "unipic_running_jobs"):
        assert f'{family}{{queue="unipic.generate.s"}}' in text
    assert "# TYPE unipic_workers_live gauge" in text
    assert _sample(text, "unipic_webhook_backlog ") >= 0
    assert _sample(text, "unipic_webhook_oldest_pending_age_seconds ") >= 0


def test_api_fleet_gauges_are_cached_between_scrapes(ops_client: Any, job_store: Any, owner_id: str) -> None:
    # Given a scrape, then a new job in a fresh queue
    ops_client.get("/metrics")
    queue = f"unipic.generate.t{new_id()[-8:]}"
    job_store.create(job(owner_id, f"generate:{new_id()}", queue=queue))
    # When scraped again at once, Then the cached snapshot does not know the queue yet (no query per scrape)
    assert queue not in ops_client.get("/metrics").text


def test_worker_histograms_are_labelled_by_kind_and_size_class(job_store: Any, owner_id: str) -> None:
    metrics = WorkerMetrics(nvml=Nvml())
    record = job_store.create(job(owner_id, f"generate:{new_id()}", queue="unipic.generate.l"))
    assert job_labels(record) == ("generate", "l")
    metrics.observe_batch([record, record])
    metrics.observe_success(record, 0.5, recorded=True)
    metrics.observe_success(record, 0.5, recorded=False)
    text = generate_latest(metrics.registry).decode()
    assert 'unipic_worker_batch_size_count{kind="generate",size="l"} 1.0' in text
    assert 'unipic_worker_model_seconds_per_item_count{kind="generate",size="l"} 2.0' in text
    assert 'unipic_job_end_to_end_seconds_count{kind="generate",size="l"} 1.0' in text
    assert 'unipic_worker_jobs_total{outcome="stale"} 1.0' in text
    assert 'unipic_worker_jobs_total{outcome="out_of_memory"} 0.0' in text  # present before the first one


def test_gpu_gauges_are_empty_but_declared_without_nvml() -> None:
    broken = Nvml()
    broken._failed = True  # fault injection: as on a machine without a driver
    text = generate_latest(WorkerMetrics(nvml=broken).registry).decode()
    assert "# TYPE unipic_worker_gpu_memory_used_bytes gauge" in text
    assert "unipic_worker_gpu_memory_used_bytes{" not in text


def test_cpu_metrics_count_deliveries_by_outcome_and_sweeper_actions() -> None:
    metrics = CpuMetrics()
    metrics.observe_deliveries({"delivered": 3, "pending": 2, "failed": 1})
    metrics.observe_deliveries({"lost": 1})
    metrics.observe_deliveries(None)
    metrics.observe(SWEEP_TASK, SweepReport(requeued=["a", "b"], workers_gone=["w"]))
    metrics.observe("something.else", SimpleNamespace())
    text = generate_latest(metrics.registry).decode()
    assert 'unipic_webhook_deliveries_total{outcome="delivered"} 3.0' in text
    assert 'unipic_webhook_deliveries_total{outcome="retry"} 2.0' in text
    assert 'unipic_webhook_deliveries_total{outcome="lost"} 1.0' in text
    assert 'unipic_sweeper_actions_total{action="requeued"} 2.0' in text
    assert 'unipic_sweeper_actions_total{action="worker_gone"} 1.0' in text
    assert 'unipic_sweeper_actions_total{action="expired"} 0.0' in text


MULTIPROC_SCRIPT = """
import sys
from api.metrics import Metrics
metrics = Metrics()
metrics.requests.labels("GET", "/v1/jobs", "200").inc()
if sys.argv[1] == "render":
    sys.stdout.write(metrics.render().decode())
"""


def test_several_api_processes_sum_their_request_counters(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.support import REPO

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT, "count"], env=env, cwd=REPO, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT, "render"], env=env, cwd=REPO, check=True,
                          timeout=60, capture_output=True, text=True)
    assert 'unipic_http_requests_total{method="GET",route="/v1/jobs",status="200"} 2.0' in done.stdout
