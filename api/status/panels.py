"""The status page's operations panels: throughput and latency over the last hour, and webhook health.

Builds template context from `storage.status.activity` and `storage.fleet.queries` and draws the charts with
`api.status.charts` (inline SVG). Anyone who may see aggregates sees the charts and the webhook backlog; failing
endpoint URLs and their errors are shown only to their owner. It knows nothing of sign-in or templates.
"""

from __future__ import annotations

from typing import Any

from api.services import Services
from api.status.charts import bar_chart, line_chart


def operations_context(services: Services, owner_id: str | None, show_aggregates: bool) -> dict[str, Any]:
    """`activity` (two SVG charts and totals), `webhooks` (backlog, oldest age, the owner's failing endpoints)."""
    if not show_aggregates and owner_id is None:
        return {"activity": None, "webhooks": None}
    buckets = services.activity.last_hour()
    labels = [b.start.strftime("%H:%M") for b in buckets]
    activity = {
        "throughput": bar_chart([(b.succeeded, b.failed) for b in buckets], labels,
                                "jobs finished per 5 minutes (green ok, red failed)"),
        "latency": line_chart([b.mean_seconds for b in buckets], labels,
                              "mean seconds from submission to result", unit=" s"),
        "succeeded": sum(b.succeeded for b in buckets), "failed": sum(b.failed for b in buckets),
    }
    fleet = services.fleet.snapshot()
    failing = services.activity.failing_endpoints(owner_id) if owner_id is not None else []
    webhooks = {"backlog": fleet.webhook_backlog, "oldest_s": round(fleet.webhook_oldest_pending_seconds),
                "failing": failing}
    return {"activity": activity, "webhooks": webhooks}
