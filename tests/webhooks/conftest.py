"""Fixtures for the webhook tests: a loopback receiver, an injected clock, jobs driven through JobStore.

Events are written by the real `JobStore` transitions (the outbox), delivered by the real dispatcher over real
HTTP to a real receiver; time is driven by the clock fixture instead of sleeping through the retry schedule.
Each test owns its API key (`owner_id`); pending events of other keys (left by other packages' tests in the shared
schema) are dropped before it, and its own leftovers after it, so a clock jump never sends a stranger's event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update

from storage.tables import WebhookEvent
from tests.support.webhooks import Clock, JobDriver, Receiver, drop_pending_events_of_others
from workers.webhooks.dispatcher import WebhookDispatcher


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher(settings: Any, session_factory: Any, object_store: Any, clock: Clock, owner_id: str,
               ) -> Iterator[WebhookDispatcher]:
    drop_pending_events_of_others(session_factory, owner_id)
    yield WebhookDispatcher(settings, session_factory, object_store, clock=clock)
    with session_factory.begin() as s:  # no stray retries into later tests
        s.execute(update(WebhookEvent).where(WebhookEvent.owner_id == owner_id, WebhookEvent.status == "pending")
                  .values(status="dropped"))


@pytest.fixture
def jobs(job_store: Any, owner_id: str) -> JobDriver:
    return JobDriver(job_store, owner_id)


@pytest.fixture
def owner_secret(session_factory: Any, owner_id: str) -> str:
    from storage.tables import ApiKey

    with session_factory() as s:
        return s.get(ApiKey, owner_id).webhook_secret
