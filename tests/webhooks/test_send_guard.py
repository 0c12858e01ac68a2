"""At send time the URL is re-resolved and re-checked, and the request goes to the checked address."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.tables import WebhookAttempt, WebhookEvent
from tests.support.claims import lease_keys
from tests.support.webhooks import JobDriver, Receiver
from workers.webhooks.dispatcher import WebhookDispatcher


def only_event(session_factory: Any, job_id: str) -> tuple[WebhookEvent, list[WebhookAttempt]]:
    with session_factory() as s:
        event = s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).one()
        attempts = list(s.scalars(select(WebhookAttempt).where(WebhookAttempt.event_id == event.id)))
        return event, attempts


def test_loopback_is_refused_at_send_time_without_the_allowlist(
    receiver: Receiver, settings: Any, session_factory: Any, object_store: Any, jobs: JobDriver,
    dispatcher: WebhookDispatcher,
) -> None:
    # Given a URL accepted earlier (allowlisted then), and a worker whose settings no longer admit loopback
    strict = settings.model_copy(update={"webhook_allowlist": []})
    guarded = WebhookDispatcher(strict, session_factory, object_store, clock=dispatcher.clock)
    job = jobs.create(receiver.url + "/x", ["job.succeeded"])
    jobs.succeed(job)
    # When it is sent
    assert guarded.dispatch_due() == {"failed": 1}
    # Then no request left the worker and the attempt says why
    event, (attempt,) = only_event(session_factory, job.id)
    assert event.status == "failed" and receiver.received == []
    assert attempt.status_code is None and "loopback" in (attempt.error or "")


def test_the_name_is_resolved_at_send_time_and_the_checked_address_is_used(
    receiver: Receiver, settings: Any, session_factory: Any, object_store: Any, jobs: JobDriver,
    dispatcher: WebhookDispatcher,
) -> None:
    answers = {"hooks.example.test": ["127.0.0.1"]}

    def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    job = jobs.create(f"http://hooks.example.test:{receiver.port}/named", ["job.started", "job.succeeded"])
    claim = jobs.start(job)
    allowed = WebhookDispatcher(settings, session_factory, object_store, clock=dispatcher.clock,
                                resolver=resolver)
    # the name now resolves to a private address (DNS rebinding): job.started is refused, nothing sent
    answers["hooks.example.test"] = ["10.9.8.7"]
    assert allowed.dispatch_due() == {"failed": 1}
    assert receiver.received == []
    # back to an admitted address: job.succeeded is delivered to that IP with the original Host header
    assert jobs.job_store.complete(claim, lease_keys(claim))
    answers["hooks.example.test"] = ["127.0.0.1"]
    assert allowed.dispatch_due() == {"delivered": 1}
    got = receiver.wait_for(1)[0]
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}" and got.path == "/named"


def test_unresolvable_name_is_retried_not_failed(
    settings: Any, session_factory: Any, object_store: Any, jobs: JobDriver, dispatcher: WebhookDispatcher,
) -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise OSError("temporary failure in name resolution")

    job = jobs.create("http://flaky-dns.example.test/x", ["job.succeeded"])
    jobs.succeed(job)
    flaky = WebhookDispatcher(settings, session_factory, object_store, clock=dispatcher.clock, resolver=no_dns)
    assert flaky.dispatch_due() == {"pending": 1}
    event, (attempt,) = only_event(session_factory, job.id)
    assert event.attempts == 1 and "does not resolve" in (attempt.error or "")
