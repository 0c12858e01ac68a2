"""The dispatcher end to end: outbox rows from real JobStore transitions, real HTTP, an injected clock."""

from __future__ import annotations

import json
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
from sqlalchemy import select

from storage.tables import WebhookAttempt, WebhookEndpoint, WebhookEvent
from storage.webhooks.store import WebhookStore
from tests.support.webhooks import Clock, JobDriver, Receiver, standard_webhook_valid
from workers.webhooks.backoff import MAX_ATTEMPTS, SCHEDULE_SECONDS
from workers.webhooks.dispatcher import WebhookDispatcher


def events_of(session_factory: Any, job_id: str) -> list[WebhookEvent]:
    with session_factory() as s:
        return list(s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.id)))


def attempts_of(session_factory: Any, event_id: str) -> list[WebhookAttempt]:
    with session_factory() as s:
        return list(s.scalars(select(WebhookAttempt).where(WebhookAttempt.event_id == event_id)
                              .order_by(WebhookAttempt.attempt)))


def test_succeeded_event_is_signed_and_shows_the_job_as_the_api_does(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, owner_secret: str, session_factory: Any,
    clock: Clock,
) -> None:
    # Given a job subscribed to job.succeeded only, which then succeeds
    job = jobs.create(receiver.url + "/hook", ["job.succeeded"])
    jobs.succeed(job)
    # When the dispatcher ticks
    assert dispatcher.dispatch_due() == {"delivered": 1}
    # Then exactly one signed request arrived, verifiable with the owner's secret (standardwebhooks)
    got = receiver.wait_for(1)[0]
    assert got.path == "/hook"
    assert standard_webhook_valid(owner_secret, got.headers, got.body, now=clock().timestamp())
    assert not standard_webhook_valid(owner_secret, got.headers, got.body.replace(b"succeeded", b"failed!!!"),
                                      now=clock().timestamp())
    assert not standard_webhook_valid(owner_secret, got.headers, got.body, now=clock().timestamp() + 3600)  # stale
    (event,) = events_of(session_factory, job.id)
    assert got.headers["webhook-id"] == event.id and event.status == "delivered"
    body = got.json
    assert body["type"] == "job.succeeded"
    data = body["data"]
    assert data["id"] == job.id and data["status"] == "succeeded" and data["kind"] == "generate"
    assert data["params"]["width"] == 256 and data["metadata"] == {"k": "v"}
    assert data["execution"]["model_seconds"] == 0.5 and data["execution"]["worker"] == "worker-test"
    image = data["result"]["images"][0]
    done = jobs.job_store.get(job.id)
    assert "X-Amz-Signature" in image["url"] and f"/{done.result_keys[0]}?" in image["url"]
    assert image["expires_at"] and image["width"] == 256
    (attempt,) = attempts_of(session_factory, event.id)
    assert attempt.status_code == 200 and attempt.latency_ms is not None and attempt.response_snippet == "ok"


def test_failing_receiver_gets_the_same_id_on_the_scheduled_retries(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, clock: Clock,
) -> None:
    # Given a receiver that fails the first two attempts
    receiver.respond(500, body=b"boom")
    receiver.respond(502)
    job = jobs.create(receiver.url + "/retry", ["job.succeeded"])
    jobs.succeed(job)
    (event,) = events_of(session_factory, job.id)
    for attempt, base in enumerate(SCHEDULE_SECONDS[:2], start=1):
        # When it is due, it is attempted and rescheduled per the schedule (with jitter)
        assert dispatcher.dispatch_due() == {"pending": 1}
        (event,) = events_of(session_factory, job.id)
        assert event.attempts == attempt and event.next_attempt_at is not None
        delay = (event.next_attempt_at - clock()).total_seconds()
        assert 0.9 * base <= delay <= 1.1 * base
        # Then nothing is sent before the next attempt is due
        clock.advance(delay - 1)
        assert dispatcher.dispatch_due() == {}
        clock.advance(1)
    assert dispatcher.dispatch_due() == {"delivered": 1}
    got = receiver.wait_for(3)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert [a.status_code for a in attempts_of(session_factory, event.id)] == [500, 502, 200]
    assert attempts_of(session_factory, event.id)[0].response_snippet == "boom"


def test_retry_after_is_honored_in_seconds_and_as_a_date(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, clock: Clock,
) -> None:
    receiver.respond(429, {"Retry-After": "120"})
    job = jobs.create(receiver.url + "/ra", ["job.succeeded"])
    jobs.succeed(job)
    dispatcher.dispatch_due()
    (event,) = events_of(session_factory, job.id)
    assert event.next_attempt_at == clock() + timedelta(seconds=120)  # not the 5 s of the schedule
    clock.advance(120)
    receiver.respond(503, {"Retry-After": format_datetime(clock() + timedelta(seconds=900), usegmt=True)})
    dispatcher.dispatch_due()
    (event,) = events_of(session_factory, job.id)
    assert event.next_attempt_at is not None
    # the injected clock: HTTP dates have whole seconds
    assert 899 < (event.next_attempt_at - clock()).total_seconds() <= 900  # wallclock-ok: injected clock
    clock.advance(900)
    assert dispatcher.dispatch_due() == {"delivered": 1}


def test_gives_up_after_the_last_attempt(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, clock: Clock,
) -> None:
    for _ in range(MAX_ATTEMPTS):
        receiver.respond(500)
    job = jobs.create(receiver.url + "/dead", ["job.failed"])
    claim = jobs.start(job)
    jobs.job_store.fail(claim, "model_error", "boom")
    for _ in range(MAX_ATTEMPTS):
        dispatcher.dispatch_due()
        clock.advance(11 * 3600)
    (event,) = events_of(session_factory, job.id)
    assert event.status == "failed" and event.attempts == MAX_ATTEMPTS and event.next_attempt_at is None
    assert len(receiver.received) == MAX_ATTEMPTS
    assert receiver.received[0].json["data"]["error"] == {"code": "model_error", "message": "boom"}


def test_410_disables_the_endpoint_and_drops_its_pending_events(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, owner_id: str,
    clock: Clock,
) -> None:
    url = receiver.url + "/gone"
    # Given two events for the same endpoint; the first answer is 410 Gone
    receiver.respond(410)
    first, second = jobs.create(url, ["job.succeeded"]), jobs.create(url, ["job.succeeded"])
    jobs.succeed(first)
    dispatcher.dispatch_due()
    jobs.succeed(second)
    # When the first attempt gets 410
    (gone,) = events_of(session_factory, first.id)
    assert gone.status == "failed"
    with session_factory() as s:
        endpoint = s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id,
                                                           WebhookEndpoint.url == url)).one()
    assert not endpoint.enabled and endpoint.disabled_reason == "410 Gone"
    # Then later events for it are dropped without a request
    assert dispatcher.dispatch_due() == {}
    assert [e.status for e in events_of(session_factory, second.id)] == ["dropped"]
    assert len(receiver.received) == 1
    # And once re-enabled, a replay is delivered with the same id
    admin = WebhookStore(session_factory)
    assert admin.enable(endpoint.id, owner_id).enabled
    (dropped,) = events_of(session_factory, second.id)
    admin.replay(dropped.id, owner_id, now=clock())
    assert dispatcher.dispatch_due() == {"delivered": 1}
    assert receiver.received[-1].headers["webhook-id"] == dropped.id


def test_rotation_signs_with_both_secrets_during_the_overlap(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, owner_id: str,
    owner_secret: str, clock: Clock,
) -> None:
    from storage.keys import KeyStore

    rotated = KeyStore(session_factory).rotate_webhook_secret(owner_id, overlap_seconds=3600)
    assert rotated.webhook_secret != owner_secret
    job = jobs.create(receiver.url + "/rot", ["job.started", "job.succeeded"])
    jobs.succeed(job)
    assert dispatcher.dispatch_due() == {"delivered": 2}
    got = receiver.wait_for(2)[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    now = clock().timestamp()
    assert standard_webhook_valid(owner_secret, got.headers, got.body, now=now)
    assert standard_webhook_valid(rotated.webhook_secret, got.headers, got.body, now=now)
    # after the overlap only the new secret signs
    clock.advance(3601)
    (started, _) = events_of(session_factory, job.id)
    WebhookStore(session_factory).replay(started.id, owner_id, now=clock())
    dispatcher.dispatch_due()
    last = receiver.wait_for(3)[-1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    assert not standard_webhook_valid(owner_secret, last.headers, last.body, now=clock().timestamp())
    assert standard_webhook_valid(rotated.webhook_secret, last.headers, last.body, now=clock().timestamp())


def test_progress_is_throttled_per_job_and_never_retried(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any, clock: Clock,
) -> None:
    job = jobs.create(receiver.url + "/progress", ["job.progress"])
    claim = jobs.start(job)
    jobs.job_store.set_progress(claim, 1, 4)
    assert dispatcher.dispatch_due() == {"delivered": 1}
    assert receiver.wait_for(1)[0].json["data"]["progress"] == {"step": 1, "total": 4}
    # progress moves twice within the interval: nothing sent until the interval passed, then only the latest
    jobs.job_store.set_progress(claim, 2, 4)
    clock.advance(1)
    assert dispatcher.dispatch_due() == {}
    jobs.job_store.set_progress(claim, 3, 4)
    clock.advance(dispatcher.progress_interval)
    receiver.respond(500)
    assert dispatcher.dispatch_due() == {"failed": 1}  # a failed progress event is not retried
    assert receiver.received[-1].json["data"]["progress"] == {"step": 3, "total": 4}
    clock.advance(24 * 3600)
    assert dispatcher.dispatch_due() == {}
    assert len(receiver.received) == 2
    assert [e.status for e in events_of(session_factory, job.id)] == ["delivered", "failed"]


def test_batch_completed_links_a_manifest_that_outlives_the_presign_expiry(
    receiver: Receiver, dispatcher: WebhookDispatcher, jobs: JobDriver, owner_id: str, migrated: Any,
    object_store: Any, clock: Clock,
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from storage.records import NewBatch, NewJob
    from tests.support.api import png_bytes

    templates = jobs.create(None), jobs.create(None)
    for template in templates:  # done first, so the batch's jobs are the owner's oldest queued ones
        jobs.succeed(template)
    news = [NewJob(owner_id=owner_id, kind=j.kind, params=j.params, compat_key=j.compat_key + "b", queue=j.queue,
                   seed=1, custom_id=f"c{i}") for i, j in enumerate(templates)]
    batch, members = jobs.job_store.create_many(
        news, NewBatch(owner_id=owner_id, webhook_url=receiver.url + "/batch", webhook_events=["batch.completed"]))
    stored = {}
    for job in members:
        jobs.succeed(job)
        for key in jobs.job_store.get(job.id).result_keys:
            stored[key] = png_bytes()
            object_store.put(key, stored[key], content_type="image/png")
    # When batch.completed is delivered
    assert dispatcher.dispatch_due() == {"delivered": 1}
    body = receiver.wait_for(1)[0].json
    assert body["type"] == "batch.completed"
    data = body["data"]
    assert data["id"] == batch.id and data["status"] == "completed"
    assert data["counts"]["succeeded"] == 2 and data["total"] == 2
    # Then its manifest link still works a day after the presign expiry, and every image in it downloads
    clock.advance(migrated.presign_expiry_seconds + 24 * 3600)
    app = create_app(migrated)
    app.state.services.manifests.clock = clock
    with TestClient(app) as api:
        answer = api.get(data["manifest_url"])
    assert answer.status_code == 200, answer.text
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["custom_id"] for line in lines] == ["c0", "c1"]
    images = [image for line in lines for image in line["result"]["images"]]
    assert sorted(image["key"] for image in images) == sorted(stored)
    assert all(httpx.get(image["url"], timeout=30).content == stored[image["key"]] for image in images)
