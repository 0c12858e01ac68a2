"""The same dispatcher on the embedded backend (SQLite file + local object store): claim, sign, deliver."""

from __future__ import annotations

from typing import Any

from storage.db import make_engine, make_session_factory
from storage.jobs.store import JobStore
from storage.keys import KeyStore
from storage.objects.base import make_object_store
from tests.support.webhooks import Clock, JobDriver, Receiver, standard_webhook_valid
from workers.webhooks.dispatcher import WebhookDispatcher


def test_sqlite_outbox_is_delivered_and_retried(embedded_settings: Any, receiver: Receiver) -> None:
    settings = embedded_settings.model_copy(update={"webhook_allowlist": ["127.0.0.0/8"], "webhook_allow_http": True})
    engine = make_engine(settings)
    try:
        sessions = make_session_factory(engine)
        key, _ = KeyStore(sessions).create("embedded")
        clock = Clock()
        dispatcher = WebhookDispatcher(settings, sessions, make_object_store(settings), clock=clock)
        jobs = JobDriver(JobStore(sessions), key.id)
        receiver.respond(503)
        job = jobs.create(receiver.url + "/sqlite", ["job.succeeded"])
        jobs.succeed(job)
        assert dispatcher.dispatch_due() == {"pending": 1}
        clock.advance(6)
        assert dispatcher.dispatch_due() == {"delivered": 1}
        first, second = receiver.wait_for(2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert standard_webhook_valid(key.webhook_secret, second.headers, second.body, now=clock().timestamp())
        assert second.json["data"]["result"]["images"][0]["url"].startswith(settings.api_url)
    finally:
        engine.dispose()
