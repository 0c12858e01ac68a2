"""A claimed event whose worker vanished is sent again once its lease ran out; a stale worker is fenced."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.tables import WebhookAttempt, WebhookEvent
from storage.webhooks.records import AttemptOutcome
from storage.webhooks.store import INTERRUPTED
from tests.support.webhooks import Clock, JobDriver, Receiver
from workers.webhooks.dispatcher import WebhookDispatcher, lease_seconds


def test_lost_claim_is_redelivered_after_the_lease_with_the_same_id(
    receiver: Receiver, settings: Any, dispatcher: WebhookDispatcher, jobs: JobDriver, session_factory: Any,
    clock: Clock,
) -> None:
    # Given a worker that claimed the event and then died without an answer
    job = jobs.create(receiver.url + "/lease", ["job.succeeded"])
    jobs.succeed(job)
    (lost,) = dispatcher.store.claim_due(clock(), 16)
    # When other workers tick during the lease, they leave it alone
    assert dispatcher.dispatch_due() == {}
    # Then after the lease it is sent again, with the same webhook-id
    clock.advance(lease_seconds(settings) + 1)
    assert dispatcher.dispatch_due() == {"delivered": 1}
    assert receiver.wait_for(1)[0].headers["webhook-id"] == lost.id
    with session_factory() as s:
        attempts = list(s.scalars(select(WebhookAttempt).where(WebhookAttempt.event_id == lost.id)
                                  .order_by(WebhookAttempt.attempt)))
        event = s.get(WebhookEvent, lost.id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [(1, None, INTERRUPTED), (2, 200, None)]
    # And the dead worker's late report cannot overwrite the newer attempt
    late = AttemptOutcome(500, 1.0, "late", None)
    assert not dispatcher.store.finish(lost, late, "pending", clock(), clock())
    with session_factory() as s:
        assert s.get(WebhookEvent, lost.id).status == "delivered" == event.status
