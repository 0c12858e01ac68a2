"""Prometheus metrics of one API process: requests by route and status, latency, and the fleet gauges.

Each app gets its own registry (tests build many apps in one process). Request metrics are labelled by the
route template (`/v1/jobs/{job_id}`), never the raw path, so cardinality stays bounded. Database gauges (jobs
by state, per-queue depth and oldest age, running jobs, live workers, webhook backlog) are read when scraped,
at most once per `JOB_COUNTS_TTL` / `FLEET_TTL` seconds, from `storage.fleet.queries` (a few grouped reads).

Several uvicorn processes: the database gauges are the same from every process, so any one answers. The
request counters are per process; with `PROMETHEUS_MULTIPROC_DIR` set (as `unipic api --workers N` does),
they are written to that directory and every scrape sums all processes (prometheus-client multiprocess mode).
It knows nothing of workers or GPUs: those export their own metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.intake.bodies import ASGIApp, Message, Receive, Scope, Send
from storage.fleet.queries import FleetSnapshot
from storage.states import JobStatus

JOB_COUNTS_TTL = 2.0
FLEET_TTL = 5.0
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
        yield GaugeMetricFamily("unipic_queue_depth", "Jobs waiting to run", value=counts.get(JobStatus.QUEUED, 0))


class FleetCollector(Collector):
    """The operator's gauges from one `FleetSnapshot`, re-read at most once per `FLEET_TTL` seconds."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        self.snapshot = snapshot
        self._cache: tuple[float, FleetSnapshot | None] = (float("-inf"), None)

    def _current(self) -> FleetSnapshot:
        at, snap = self._cache
        if snap is None or time.monotonic() - at > FLEET_TTL:
            snap = self.snapshot()
            self._cache = (time.monotonic(), snap)
        return snap

    def collect(self) -> Iterator[Any]:
        snap = self._current()
        depth = GaugeMetricFamily("unipic_queue_jobs", "Jobs waiting in a GPU queue", labels=["queue"])
        age = GaugeMetricFamily("unipic_queue_oldest_age_seconds", "Age of the oldest queued job (0 when empty)",
                                labels=["queue"])
        running = GaugeMetricFamily("unipic_running_jobs", "Jobs running, by the queue they came from",
                                    labels=["queue"])
        for queue, state in snap.queues.items():
            depth.add_metric([queue], state.queued)
            age.add_metric([queue], state.oldest_queued_seconds)
            running.add_metric([queue], state.running)
        live = GaugeMetricFamily("unipic_workers_live", "Live model workers subscribed to a queue, by device",
                                 labels=["queue", "device"])
        for (queue, device), n in sorted(snap.live_workers.items()):
            live.add_metric([queue, device], n)
        by_transport = GaugeMetricFamily("unipic_workers_live_by_transport",
                                         "Live model workers by transport (direct, or remote via the gateway)",
                                         labels=["transport"])
        for transport, n in sorted(snap.live_by_transport.items()):
            by_transport.add_metric([transport], n)
        yield from (depth, age, running, live, by_transport)
        yield GaugeMetricFamily("unipic_webhook_backlog", "Webhook events pending delivery",
                                value=snap.webhook_backlog)
        yield GaugeMetricFamily("unipic_webhook_oldest_pending_age_seconds",
                                "Age of the oldest pending webhook event (0 when none)",
                                value=snap.webhook_oldest_pending_seconds)


class Metrics:
    """The registry and instruments of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._db_collectors: list[Collector] = []
        self.requests = Counter("unipic_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("unipic_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch_jobs(self, counts: Callable[[], dict[str, int]]) -> None:
        self._watch(JobCollector(counts))

    def watch_fleet(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        self._watch(FleetCollector(snapshot))

    def _watch(self, collector: Collector) -> None:
        self._db_collectors.append(collector)
        self.registry.register(collector)

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        merged = CollectorRegistry()  # every process's request metrics, plus this process's database gauges
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        for collector in self._db_collectors:
            merged.register(collector)
        return generate_latest(merged)


class MetricsMiddleware:
    """ASGI middleware observing every HTTP request (status and latency by route template)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
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
