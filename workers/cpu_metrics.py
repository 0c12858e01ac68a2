"""Prometheus metrics of the CPU worker (webhook delivery + sweeper), served on `unipic cpu-worker --metrics-port`.

Owns two counters, fed from Celery signals with what the sweeper's task returns (`task_postrun`) and what each
tick of the webhook dispatch loop counted (`webhooks_dispatched`), so the delivery and sweeper code stays free
of metrics: webhook deliveries by outcome (`delivered`, `retry` = still pending after a
failed attempt, `failed`, `lost` = lease lost) and sweeper actions (`requeued` = lease expiries put back in the
queue, `expired`, `reenqueued`, `worker_gone`). A CPU worker is one process with a thread pool, so
plain counters are exact (no multiprocess mode). It knows nothing of how deliveries or sweeps are done.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_postrun
from prometheus_client import CollectorRegistry, Counter, start_http_server

from storage.routing import SWEEP_TASK
from workers.webhooks.dispatcher import webhooks_dispatched

log = logging.getLogger(__name__)

DELIVERY_OUTCOMES = {"delivered": "delivered", "pending": "retry", "failed": "failed", "lost": "lost"}
SWEEP_ACTIONS = {"requeued": "requeued", "expired": "expired", "reenqueued": "reenqueued",
                 "workers_gone": "worker_gone"}


class CpuMetrics:
    """The counters, and the signal handler that feeds them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter("unipic_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"],
                                  registry=self.registry)
        self.sweeper_actions = Counter("unipic_sweeper_actions", "Jobs and workers the sweeper acted on",
                                       ["action"], registry=self.registry)
        for outcome in DELIVERY_OUTCOMES.values():
            self.deliveries.labels(outcome)
        for action in SWEEP_ACTIONS.values():
            self.sweeper_actions.labels(action)

    def observe_deliveries(self, counts: Any) -> None:
        """Count one dispatch tick's deliveries by final status (anything unexpected is ignored)."""
        if isinstance(counts, dict):
            for status, n in counts.items():
                self._delivery(status, int(n))

    def observe(self, task_name: str, retval: Any) -> None:
        """Count what one finished task returned (anything unexpected is ignored)."""
        if task_name == SWEEP_TASK and retval is not None:
            for attr, action in SWEEP_ACTIONS.items():
                n = len(getattr(retval, attr, ()) or ())
                if n:
                    self.sweeper_actions.labels(action).inc(n)

    def _delivery(self, status: str, n: int) -> None:
        if status in DELIVERY_OUTCOMES and n > 0:
            self.deliveries.labels(DELIVERY_OUTCOMES[status]).inc(n)

    def connect(self) -> None:
        """Feed the counters from every task this process runs."""

        def on_postrun(sender: Any = None, retval: Any = None, **_: Any) -> None:
            self.observe(getattr(sender, "name", ""), retval)

        def on_dispatched(sender: Any = None, counts: Any = None, **_: Any) -> None:
            self.observe_deliveries(counts)

        task_postrun.connect(on_postrun, weak=False)
        webhooks_dispatched.connect(on_dispatched, weak=False)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        log.info("serving CPU worker metrics on %s:%d", addr, port)
        return start_http_server(port, addr=addr, registry=self.registry)


def serve_cpu_metrics(port: int) -> CpuMetrics:
    """Counters fed by this process's tasks, exposed on `port` (the `cpu-worker --metrics-port` path)."""
    metrics = CpuMetrics()
    metrics.connect()
    metrics.serve(port)
    return metrics
