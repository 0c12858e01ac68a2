"""Prometheus metrics of a model worker, optionally served on `--metrics-port`.

Batch sizes, model seconds per item, queue wait, OOM splits, job outcomes and accelerator memory. The
collectors live in a registry of their own so a test process can build several workers' worth without
clashes. It knows nothing of jobs beyond the numbers it is given.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


class WorkerMetrics:
    """The worker's collectors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "unipic_worker_batch_size", "Jobs per batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r
        )
        self.model_seconds = Histogram(
            "unipic_worker_model_seconds_per_item", "Model seconds per job", buckets=_SECONDS, registry=r
        )
        self.queue_wait = Histogram(
            "unipic_worker_queue_wait_seconds", "Seconds from queued to claimed", buckets=_SECONDS, registry=r
        )
        self.oom_splits = Counter("unipic_worker_oom_splits", "Batches split after out of memory", registry=r)
        self.jobs = Counter("unipic_worker_jobs", "Jobs finished by outcome", ["outcome"], registry=r)
        self.gpu_memory = Gauge(
            "unipic_worker_gpu_memory_bytes", "Accelerator memory", ["state"], registry=r
        )

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
