"""storage.tracing: one trace per job across the API, the worker and webhook delivery; free when off.

Spans go to the SDK's in-memory exporter. The API part runs through the real app (TestClient); the worker part
records the spans of a job claimed and completed through the real JobStore; the webhook part is a real delivery
attempt by the dispatcher to a receiver that is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from storage import tracing
from storage.tables import WebhookEvent
from tests.support.claims import claim_job, lease_keys
from tests.support.stack import free_port
from tests.support.webhooks import drop_pending_events_of_others
from workers.runner.traces import trace_failure, trace_success


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)


def test_the_endpoint_comes_from_settings() -> None:
    from storage.settings import load_settings

    assert not tracing.setup_from_settings(load_settings(otel_endpoint=""), "unipic-test")
    assert not tracing.enabled()
    try:
        assert tracing.setup_from_settings(load_settings(otel_endpoint="http://127.0.0.1:9/v1/traces"), "unipic-test")
        assert tracing.enabled()
    finally:
        tracing.install(None)


def test_off_by_default_records_nothing() -> None:
    assert not tracing.enabled()
    tracing.record("0190e3f2-0000-7000-8000-000000000000", "x", datetime.now(UTC), datetime.now(UTC))
    with tracing.span("0190e3f2-0000-7000-8000-000000000000", "y"):
        pass


def test_a_jobs_life_is_one_trace(spans: InMemorySpanExporter, ops_client: Any, migrated: Any,
                                  job_store: Any, session_factory: Any) -> None:
    # Given a job submitted through the API with a webhook whose receiver is down
    _, key = ops_client.app.state.services.keys.create("tracing")
    hook = f"http://127.0.0.1:{free_port()}/hook"
    answer = ops_client.post("/v1/jobs", headers={"Authorization": f"Bearer {key}"}, json={
        "kind": "generate", "prompt": "a fox", "width": 256, "height": 256, "steps": 2, "webhook_url": hook})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    # When a worker claims and completes it, and the dispatcher tries its webhook
    [claim] = claim_job(job_store, job_id, "w-trace")
    record = job_store.get_many([job_id])[0]
    assert job_store.complete(claim, lease_keys(claim), None, {"model_seconds": 1.0, "upload_seconds": 0.2},
                              "tiny", None)
    trace_success(record, 1.0, 0.2, 1, recorded=True)
    trace_failure(job_id, "model_error", "only to see the span")
    _deliver_the_jobs_events(migrated, session_factory, job_id, record.owner_id)
    # Then every span carries the job's trace id, from the API's enqueue to the webhook attempt
    finished = spans.get_finished_spans()
    names = {s.name for s in finished if s.context.trace_id == tracing.trace_id_of(job_id)}
    assert {"unipic.api.enqueue", "unipic.queue", "unipic.model", "unipic.upload", "unipic.complete",
            "unipic.job.run", "unipic.job.failed", "unipic.webhook.deliver"} <= names
    by_name = {s.name: s for s in finished}
    assert by_name["unipic.queue"].end_time <= by_name["unipic.model"].end_time <= by_name["unipic.upload"].end_time
    assert by_name["unipic.webhook.deliver"].attributes["unipic.job_id"] == job_id


def _deliver_the_jobs_events(settings: Any, session_factory: Any, job_id: str, owner_id: str) -> None:
    from workers.webhooks.dispatcher import WebhookDispatcher

    drop_pending_events_of_others(session_factory, owner_id)
    allowing = settings.model_copy(update={"webhook_allowlist": ["127.0.0.0/8"], "webhook_allow_http": True})
    outcomes = WebhookDispatcher.from_settings(allowing).dispatch_due()
    assert outcomes and set(outcomes) <= {"pending", "failed"}, outcomes  # the receiver is down
    with session_factory() as s:
        attempted = s.scalars(select(WebhookEvent.attempts).where(WebhookEvent.job_id == job_id)).all()
    assert attempted and all(n == 1 for n in attempted), attempted
