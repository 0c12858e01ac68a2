"""Prometheus metrics of one API process: requests by route and status, latency, jobs by state, queue depth.

Each app gets its own registry (tests build many apps in one process). Request metrics are labelled by the
route template (`/v1/jobs/{job_id}`), never the raw path, so cardinality stays bounded. Job counts are read
from Postgres when scraped, at most once per `JOB_COUNTS_TTL` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.bodies import Message, Receive, Scope, Send

JOB_COUNTS_TTL = 2.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class JobCollector(Collector):
    """`unipic_jobs{status}` and `unipic_queue_depth`, read on scrape (cached briefly)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts
        self._cache: tuple[float, dict[str, int]] = (float("-inf"), {})

    def collect(self) -> Iterator[Any]:
        at, counts = self._cache
        if time.monotonic() - at > JOB_COUNTS_TTL:
            counts = self.counts()
            self._cache = (time.monotonic(), counts)
        jobs = GaugeMetricFamily("unipic_jobs", "Jobs by status", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("unipic_queue_depth", "Jobs waiting to run", value=counts.get("queued", 0))


class Metrics:
    """The registry and instruments of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("unipic_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("unipic_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch_jobs(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(JobCollector(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware observing every HTTP request (status and latency by route template)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
