"""Webhook delivery: the dispatcher that drains the outbox, its policy, and the loop that runs it.

Each CPU webhook worker runs the dispatch loop on its own threads (`DispatchLoop`, started when the Celery worker
is ready; GPU workers never deliver): about one tick a second from the process, the threads taking turns, with no
broker and no beat in the path, so a Redis restart or a beat outage does not stop delivery. Each tick has the
store write due `job.progress` events, leases due outbox events (`storage.webhooks.store.WebhookStore`, the only
code touching webhook rows) and delivers them in a small thread pool. For each one it:

1. re-checks the URL with the SSRF guard (`egress.url_guard`, re-resolving the name) and connects to the
   checked address (`delivery`);
2. renders the body fresh (`payload`: result URLs presigned now) and signs it with every live secret of the
   owner (`payload.webhook_headers`, by `standardwebhooks`), `webhook-id` = the outbox id, stable across retries;
3. decides: 2xx delivered; 410 Gone disables the endpoint and drops its pending events; anything else (3xx,
   4xx, 5xx, timeout, refused connection) is retried on the schedule of `backoff` or its `Retry-After`,
   up to 8 attempts over about a day, then failed. `job.progress` is never retried. A URL the guard now refuses
   fails at once; a name that does not resolve is retried.

A worker killed mid-delivery loses nothing: the event's lease runs out and the next tick sends it again with the
same `webhook-id`. Time is injected (`clock`) so tests drive the schedule without sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from celery.utils.dispatch import Signal

from egress.url_guard import Resolver, UnresolvableWebhookUrl, UnsafeWebhookUrl, check_webhook_url
from storage import tracing
from storage.batches.manifests import Manifests
from storage.batches.store import BatchStore
from storage.clock import utcnow
from storage.db import SessionFactory
from storage.errors import NotFound
from storage.keys import KeyStore
from storage.objects.base import ObjectStore
from storage.records import JobRecord
from storage.settings import Settings
from storage.states import EventType
from storage.webhooks.records import AttemptOutcome, ClaimedEvent
from storage.webhooks.store import WebhookStore
from workers.webhooks import backoff
from workers.webhooks.delivery import SendResult, post_webhook
from workers.webhooks.payload import batch_data, job_data, render_body, webhook_headers

log = logging.getLogger(__name__)

DISPATCH_INTERVAL_SECONDS = 1.0
PROGRESS_INTERVAL_SECONDS = 3.0
CLAIM_LIMIT = 16
CONCURRENCY = 8
TICK_BUDGET_SECONDS = 20.0


def lease_seconds(settings: Settings) -> float:
    """How long a claimed event is held: past the longest attempt the timeout allows, plus a margin."""
    return 2 * settings.webhook_timeout_seconds + 5.0


class WebhookDispatcher:
    """Claims due outbox events and delivers them; one per worker process."""

    def __init__(
        self,
        settings: Settings,
        session_factory: SessionFactory,
        object_store: ObjectStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
        progress_interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self.objects = object_store
        self.clock = clock
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.progress_interval = progress_interval
        self.store = WebhookStore(session_factory, lease_seconds=lease_seconds(settings),
                                  progress_interval=progress_interval)
        self.keys = KeyStore(session_factory)
        self.manifests = Manifests(session_factory, BatchStore(session_factory), object_store, settings, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookDispatcher:
        """A dispatcher with its own engine and object store (one per worker process)."""
        from storage.db import make_engine, make_session_factory
        from storage.objects.base import make_object_store

        return cls(settings, make_session_factory(make_engine(settings)), make_object_store(settings))

    def dispatch_due(self, limit: int = CLAIM_LIMIT, budget_seconds: float = TICK_BUDGET_SECONDS) -> dict[str, int]:
        """One tick: emit progress events, then claim and deliver due events in rounds of `limit` while rounds
        come back full and the tick's time budget lasts (a backlog drains faster than one round a second).
        Returns counts per final status."""
        self.store.emit_progress_events(self.clock())
        counts: dict[str, int] = {}
        started = time.monotonic()
        while True:
            events = self.store.claim_due(self.clock(), limit)
            for outcome in self._deliver_all(events):
                counts[outcome] = counts.get(outcome, 0) + 1
            if len(events) < limit or time.monotonic() - started > budget_seconds:
                return counts

    def _deliver_all(self, events: list[ClaimedEvent]) -> list[str]:
        if len(events) <= 1:
            return [self.deliver(e) for e in events]
        with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(events))) as pool:
            return list(pool.map(self.deliver, events))

    def deliver(self, event: ClaimedEvent) -> str:
        """Send one leased event and record the outcome; returns the event's status afterwards."""
        try:
            return self._deliver(event)
        except Exception as exc:  # a bug or an outage while rendering: retry on the schedule, keep the tick alive
            log.exception("webhook %s attempt %d crashed job=%s batch=%s", event.id, event.attempt, event.job_id,
                          event.batch_id)
            return self._settle(event, SendResult(None, 0.0, error=f"internal error: {type(exc).__name__}"))

    def _deliver(self, event: ClaimedEvent) -> str:
        try:
            target = check_webhook_url(event.url, self.settings, self.resolver)
        except UnresolvableWebhookUrl as exc:
            return self._settle(event, SendResult(None, 0.0, error=exc.message))
        except UnsafeWebhookUrl as exc:
            log.warning("webhook %s refused by the SSRF guard job=%s: %s", event.id, event.job_id, exc.message)
            return self._finish(event, SendResult(None, 0.0, error=exc.message), "failed", None)
        secrets = self._secrets(event.owner_id)
        if not secrets:
            return self._finish(event, SendResult(None, 0.0, error="owner has no signing secret"), "failed", None)
        body = render_body(event.event_type, event.payload, self._data(event))
        timestamp = int(self.clock().timestamp())
        headers = webhook_headers(secrets, event.id, timestamp, body)
        with tracing.span(event.job_id, "unipic.webhook.deliver", event_type=event.event_type,
                          attempt=event.attempt, event_id=event.id):
            result = post_webhook(target, headers, body, self.settings.webhook_timeout_seconds)
        log.info("webhook %s %s attempt %d -> %s job=%s batch=%s", event.id, event.event_type, event.attempt,
                 result.status_code or result.error, event.job_id, event.batch_id)
        return self._settle(event, result)

    def _settle(self, event: ClaimedEvent, result: SendResult) -> str:
        now = self.clock()
        if result.ok:
            return self._finish(event, result, "delivered", None)
        if result.status_code == 410:
            self._finish(event, result, "failed", None)
            dropped = self.store.disable_endpoint(event.owner_id, event.url, "410 Gone", now)
            log.warning("webhook endpoint disabled (410 Gone) owner=%s, %d pending events dropped",
                        event.owner_id, dropped)
            return "failed"
        if event.event_type == EventType.JOB_PROGRESS:
            return self._finish(event, result, "failed", None)
        retry_at = backoff.next_attempt_at(now, event.attempt, result.retry_after, self.rng)
        return self._finish(event, result, "pending" if retry_at else "failed", retry_at)

    def _finish(self, event: ClaimedEvent, result: SendResult, status: str, retry_at: datetime | None) -> str:
        outcome = AttemptOutcome(result.status_code, result.latency_ms, result.snippet, result.error)
        if not self.store.finish(event, outcome, status, retry_at, self.clock()):
            log.warning("webhook %s: lease lost before attempt %d was recorded", event.id, event.attempt)
            return "lost"
        return status

    def _secrets(self, owner_id: str) -> list[str]:
        try:
            return self.keys.get(owner_id).webhook_secrets(self.clock())
        except NotFound:
            return []

    def _data(self, event: ClaimedEvent) -> dict[str, Any]:
        snapshot = dict(event.payload.get("data") or {})
        expiry = self.settings.presign_expiry_seconds
        subject = self.store.subject(event)
        if subject is None:
            return snapshot  # the row is gone: send what the outbox recorded
        if isinstance(subject, JobRecord):
            return job_data(subject, snapshot, self.objects, expiry)
        return batch_data(subject, snapshot, self.manifests.link(subject))  # batch.completed links its manifest


# -- the dispatch loop ---------------------------------------------------------------------------------------------
class DispatchLoop:
    """Ticks of the dispatcher on this process's own threads: about one tick every `interval` from the process,
    the threads taking turns (each ticks every `threads * interval`), so a thread held by a slow endpoint's round
    leaves the others ticking, and an idle process reads the outbox about once a second, however many threads.

    The outbox is in the database and so is the leasing (several threads, processes or replicas share it), so the
    loop needs no broker: webhooks keep flowing while Redis restarts or beat is down. When ticks were Celery tasks
    that beat sent every second through Redis, a CI run saw no tick deliver anything after a Redis restart (Celery's
    consumer can stop consuming after a reconnection: celery/celery#8030), and every outbox event stayed pending.
    `observe` hears each tick's counts (the CPU worker's metrics)."""

    def __init__(self, dispatcher: Callable[[], WebhookDispatcher], threads: int = 1,
                 interval: float = DISPATCH_INTERVAL_SECONDS,
                 observe: Callable[[dict[str, int]], None] | None = None) -> None:
        count = max(1, threads)
        self.dispatcher, self.period, self.observe = dispatcher, interval * count, observe
        self.stopping = threading.Event()
        self.ticks = 0
        self._threads = [threading.Thread(target=self._run, args=(i * interval,), name=f"webhook-dispatch-{i}",
                                          daemon=True) for i in range(count)]

    def start(self) -> DispatchLoop:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = TICK_BUDGET_SECONDS + 5.0) -> None:
        """Stop after the ticks in progress (a delivery in flight finishes or its lease runs out)."""
        self.stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _run(self, offset: float) -> None:
        """Tick on a fixed schedule (the thread's turn every `period`, `offset` into it), so the threads keep
        their turns; a tick that overran its turns goes on at the next turn to come."""
        next_at = time.monotonic() + offset
        while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
            try:
                counts = self.dispatcher().dispatch_due()
                if self.observe is not None:
                    self.observe(counts)
            except Exception:  # the database is down, say: the next tick tries again
                log.exception("webhook dispatch tick failed")
            self.ticks += 1
            now = time.monotonic()
            next_at += self.period * (1 + max(0, int((now - next_at) // self.period)))


# -- Celery wiring ------------------------------------------------------------------------------------------------
def register(app: Celery, settings: Settings) -> None:
    """Run the dispatch loop in each Celery worker of this (CPU) app: started when the worker is ready, with as
    many threads as its concurrency, stopped when it shuts down. Beat sends no dispatch ticks (see DispatchLoop).

    The dispatcher (engine, object store) is built on the first tick in the worker process; it is thread-safe.
    """
    holder: dict[str, WebhookDispatcher] = {}
    lock = threading.Lock()  # the loop's threads tick concurrently: build one dispatcher per process
    loops: list[DispatchLoop] = []

    def dispatcher() -> WebhookDispatcher:
        with lock:
            if "dispatcher" not in holder:
                holder["dispatcher"] = WebhookDispatcher.from_settings(settings)
            return holder["dispatcher"]

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        threads = int(getattr(getattr(sender, "controller", None), "concurrency", 1) or 1)
        loops.append(DispatchLoop(dispatcher, threads, observe=_send_dispatched(app)).start())

    def on_shutdown(**_: Any) -> None:
        while loops:
            loops.pop().stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)


def _send_dispatched(app: Celery) -> Callable[[dict[str, int]], None]:
    """Send `webhooks_dispatched` with a tick's counts (`workers.cpu_metrics` listens)."""

    def send(counts: dict[str, int]) -> None:
        webhooks_dispatched.send(sender=app, counts=counts)

    return send


webhooks_dispatched = Signal(name="webhooks_dispatched", providing_args=["counts"])
"""Sent after each dispatch tick with its counts per final status (a Celery signal, as `task_postrun` is)."""
