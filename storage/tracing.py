"""OpenTelemetry traces of a job's life: one trace per job, whose id IS the job id (a UUIDv7 is 128 bits).

Every process derives the same trace context from the job id alone (`job_context`), so the API's enqueue, the
worker's queue wait, model, encode + upload and completion, and each webhook delivery of that job land in one
trace with nothing extra stored in the row or the message. Spans hang under a virtual root whose span id is the
job id's low 64 bits. Worker spans are recorded when the outcome is known, with their real start and end times
(from the row's timestamps and the recorded timings), so the batching code needs one call per outcome.

Off unless `setup(endpoint)` ran (every `unipic` process calls `setup_from_settings()` at start; it exports over
OTLP/HTTP when `Settings.otel_endpoint`, `UNIPIC_OTEL_ENDPOINT`, is set): until then `record` and `span` return at
once, at no cost. The SDK and
the exporter are the optional `tracing` extra. It knows nothing of jobs beyond ids and times.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from storage.settings import Settings

log = logging.getLogger(__name__)

_provider: Any = None  # an opentelemetry.sdk.trace.TracerProvider once tracing is on
LOW_64 = (1 << 64) - 1


def enabled() -> bool:
    return _provider is not None


def install(provider: Any) -> None:
    """Use this SDK `TracerProvider` (tests pass one with an in-memory exporter); None turns tracing off."""
    global _provider
    _provider = provider


def setup(endpoint: str, service_name: str) -> bool:
    """Export spans over OTLP/HTTP to `endpoint` (e.g. http://collector:4318/v1/traces); False if unavailable."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("UNIPIC_OTEL_ENDPOINT is set but tracing is not installed (pip install '.[tracing]'): %s", exc)
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    log.info("tracing: exporting spans of %s to %s", service_name, endpoint)
    return True


def setup_from_settings(settings: Settings, service_name: str = "unipic") -> bool:
    """Export to `settings.otel_endpoint` when it is set; False (tracing stays off) otherwise."""
    endpoint = settings.otel_endpoint
    return bool(endpoint) and setup(endpoint, service_name)


def trace_id_of(job_id: str) -> int:
    """The trace id of a job: its UUID as a 128-bit integer."""
    return uuid.UUID(job_id).int


def job_context(job_id: str) -> Any:
    """An OpenTelemetry context whose (remote) parent is the job's virtual root span."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    trace_id = trace_id_of(job_id)
    root = SpanContext(trace_id, (trace_id & LOW_64) or 1, is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return set_span_in_context(NonRecordingSpan(root))


def record(job_id: str, name: str, start: datetime, end: datetime, **attributes: Any) -> None:
    """A finished span of this job's trace, from `start` to `end` (no-op when tracing is off)."""
    if _provider is None:
        return
    try:
        span = _provider.get_tracer("unipic").start_span(
            name, context=job_context(job_id), start_time=_ns(start),
            attributes={"unipic.job_id": job_id, **_clean(attributes)})
        span.end(end_time=max(_ns(end), _ns(start)))
    except ValueError:  # not a UUID: no trace for it
        log.debug("no trace for job id %r", job_id)


@contextmanager
def span(job_id: str | None, name: str, **attributes: Any) -> Iterator[None]:
    """A span of this job's trace around the block (no-op when tracing is off or there is no job)."""
    if _provider is None or not job_id:
        yield
        return
    try:
        context = job_context(job_id)
    except ValueError:
        yield
        return
    tracer = _provider.get_tracer("unipic")
    with tracer.start_as_current_span(name, context=context,
                                      attributes={"unipic.job_id": job_id, **_clean(attributes)}):
        yield


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"unipic.{k}": v for k, v in attributes.items() if isinstance(v, (str, int, float, bool))}
