"""Prometheus metrics of a model worker, optionally served on `--metrics-port`.

Batch sizes, items per step, queue wait, model seconds per item and end-to-end seconds (by kind and size
class), the time the model is busy (its rate: the busy fraction, what a continuous worker keeps near 1), OOM splits,
job outcomes (succeeded, canceled, stale, or the failure's error code) and accelerator memory: what PyTorch
holds (`allocated`/`reserved`) and, where NVML answers, the device's used/total memory and utilization. The
collectors live in a registry of their own so a test process can build several workers' worth without clashes.
A model worker is one process (solo pool), so no multiprocess mode is needed. It knows nothing of jobs beyond
the records it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from storage.records import JobRecord
from workers.device.nvml import Nvml

log = logging.getLogger(__name__)

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
JOB_LABELS = ("kind", "size")
# outcomes that exist from the start (0), so rate() and alert expressions have a series before the first one
OUTCOMES = ("succeeded", "canceled", "stale", "worker_lost", "out_of_memory", "model_error", "invalid_input",
            "timeout")


def job_labels(job: JobRecord) -> tuple[str, str]:
    """(kind, size class) of a job, from its queue name `unipic.<kind>.<class>`: bounded cardinality."""
    parts = job.queue.split(".")
    return job.kind, parts[-1] if len(parts) >= 3 else "unknown"


class NvmlCollector(Collector):
    """Per-GPU memory used/total and utilization, read from NVML at scrape time (nothing without a driver)."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml

    def collect(self) -> Iterator[Any]:
        used = GaugeMetricFamily("unipic_worker_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("unipic_worker_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        util = GaugeMetricFamily("unipic_worker_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"])
        for gpu in self.nvml.read():
            used.add_metric([str(gpu.index)], gpu.memory_used)
            total.add_metric([str(gpu.index)], gpu.memory_total)
            util.add_metric([str(gpu.index)], gpu.utilization)
        yield from (used, total, util)


class WorkerMetrics:
    """The worker's collectors."""

    def __init__(self, registry: CollectorRegistry | None = None, nvml: Nvml | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram("unipic_worker_batch_size", "Jobs per batch", JOB_LABELS,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.model_seconds = Histogram("unipic_worker_model_seconds_per_item", "Model seconds per job", JOB_LABELS,
                                       buckets=_SECONDS, registry=r)
        self.queue_wait = Histogram("unipic_worker_queue_wait_seconds", "Seconds from queued to claimed",
                                    JOB_LABELS, buckets=_SECONDS, registry=r)
        self.end_to_end = Histogram("unipic_job_end_to_end_seconds", "Seconds from submission to success",
                                    JOB_LABELS, buckets=_SECONDS, registry=r)
        self.step_items = Histogram("unipic_worker_step_items", "Items advanced per model step (a running set's "
                                    "step or token; a whole batch: its size, once per call)", JOB_LABELS,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=r)
        self.model_busy = Counter("unipic_worker_model_busy_seconds", "Seconds inside model calls (steps, decodes, "
                                  "admissions, whole batches); its rate is the fraction of time the model is busy",
                                  registry=r)
        self.oom_splits = Counter("unipic_worker_oom_splits", "Batches split after out of memory", registry=r)
        self.jobs = Counter("unipic_worker_jobs", "Jobs finished by outcome (error code for failures)",
                            ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)
        self.gpu_memory = Gauge("unipic_worker_gpu_memory_bytes", "Accelerator memory held by PyTorch", ["state"],
                                registry=r)
        r.register(NvmlCollector(nvml or Nvml()))

    def observe_batch(self, jobs: Iterable[JobRecord]) -> None:
        """A batch was claimed: its size and each job's wait in the queue."""
        jobs = list(jobs)
        if not jobs:
            return
        self.batch_size.labels(*job_labels(jobs[0])).observe(len(jobs))
        for job in jobs:
            if job.queue_seconds is not None:
                self.queue_wait.labels(*job_labels(job)).observe(job.queue_seconds)

    def observe_model_call(self, seconds: float, job: JobRecord | None = None, items: int = 0) -> None:
        """A model call took `seconds`; a step (or a whole batch) advanced `items` items of `job`'s kind and size."""
        self.model_busy.inc(max(0.0, seconds))
        if job is not None and items:
            self.step_items.labels(*job_labels(job)).observe(items)

    def observe_success(self, job: JobRecord, model_seconds_per_item: float, recorded: bool) -> None:
        """A job's result was written; `recorded` is False when its lease was lost (a stale claim)."""
        labels = job_labels(job)
        self.model_seconds.labels(*labels).observe(model_seconds_per_item)
        self.jobs.labels("succeeded" if recorded else "stale").inc()
        if recorded:
            created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=UTC)
            self.end_to_end.labels(*labels).observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))

    def observe_gpu_memory(self, device: str) -> None:
        """Record allocated/reserved memory of a CUDA device (nothing on CPU)."""
        if not device.startswith("cuda"):
            return
        import torch

        self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated(device))
        self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved(device))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Expose the metrics over HTTP on `port`."""
        log.info("serving worker metrics on %s:%d", addr, port)
        return start_http_server(port, addr=addr, registry=self.registry)
