"""Fixtures for the webhook tests: a loopback receiver, an injected clock, jobs driven through JobStore.

Events are written by the real `JobStore` transitions (the outbox), delivered by the real dispatcher over real
HTTP to a real receiver; time is driven by the clock fixture instead of sleeping through the retry schedule.
Each test owns its API key (`owner_id`); its leftover pending events are dropped afterwards so a later test's
clock jump never sends them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from storage.records import NewJob
from storage.tables import WebhookEvent, utcnow
from tests.webhooks.receiver import Receiver
from workers.webhooks import WebhookDispatcher


class Clock:
    """A frozen clock that only `advance(seconds)` moves; the dispatcher and the test read the same time.

    It starts a minute ahead of the real time, so rows the stores write with the real time during a test are
    due at once, and exact schedule arithmetic holds (no real time passes between two readings).
    """

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


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
    yield WebhookDispatcher(settings, session_factory, object_store, clock=clock)
    with session_factory.begin() as s:  # no stray retries into later tests
        s.execute(update(WebhookEvent).where(WebhookEvent.owner_id == owner_id, WebhookEvent.status == "pending")
                  .values(status="dropped"))


@dataclass
class JobDriver:
    """Moves jobs through the real state machine so the outbox gets real events."""

    job_store: Any
    owner_id: str

    def create(self, url: str | None, events: list[str] | None = None, **kw: Any) -> Any:
        params = {"prompt": "a cat", "negative_prompt": None, "width": 256, "height": 256, "num_images": 1,
                  "steps": 4, "guidance_scale": 3.0, "guidance_schedule": "constant", "temperature": 1.0,
                  "seed": 1, "output_format": "png"}
        return self.job_store.create(NewJob(
            owner_id=self.owner_id, kind="generate", params=params,
            compat_key=f"generate:256:4:3.0:constant:{secrets.token_hex(4)}", queue="unipic.generate.s",
            seed=1, webhook_url=url, webhook_events=events, metadata={"k": "v"}, **kw,
        ))

    def start(self, job: Any) -> Any:
        claims = self.job_store.claim_batch(job.id, "worker-test", 60.0, 1, 10**9)
        assert claims, "the job should be claimable"
        return claims[0]

    def succeed(self, job: Any) -> Any:
        claim = self.start(job)
        assert self.job_store.complete(claim, [f"results/{job.id}/0.png"], timings={"model_seconds": 0.5})
        return claim


@pytest.fixture
def jobs(job_store: Any, owner_id: str) -> JobDriver:
    return JobDriver(job_store, owner_id)


@pytest.fixture
def owner_secret(session_factory: Any, owner_id: str) -> str:
    from storage.tables import ApiKey

    with session_factory() as s:
        return s.get(ApiKey, owner_id).webhook_secret
