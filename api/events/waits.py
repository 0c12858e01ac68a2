"""`?wait=N` on `GET /v1/jobs/{id}` and `GET /v1/batches/{id}`: block until finished, woken by events.

A waiter registers a `Watch` (`api.events.hub`) and then reads the row, so no event falls between; it reads again
only when the watch wakes (an event of its job or batch, or a resync after Redis came back) and, as a safety net,
every `RECONCILE_SECONDS`. In poll mode (no Redis, or `UNIPIC_EVENTS_MODE=poll`) the watch never wakes and the
waiter reads every `POLL_SECONDS`, the old long-poll. Waiters count against the same per-key and per-process
limits as event streams. Knows nothing of rendering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError, retry_later
from api.events.hub import EventHub, TooManyStreams, Watch

POLL_SECONDS = 0.25
RECONCILE_SECONDS = 5.0
TOO_MANY_STREAMS = "too_many_streams"
RETRY_AFTER_S = 5
READY_TIMEOUT_S = 2.0

T = TypeVar("T")


def hub_of(request: Request) -> EventHub:
    """The process's event hub (built by `api.app.create_app`)."""
    hub: EventHub = request.app.state.event_hub
    return hub


def open_watch(hub: EventHub, owner_id: str, job_ids: Iterable[str] = (), batch_ids: Iterable[str] = ()) -> Watch:
    """A watch, or 429 `too_many_streams` (with Retry-After) past the key's or the process's limit."""
    try:
        return hub.watch(owner_id, job_ids, batch_ids)
    except TooManyStreams as exc:
        error: ApiError = retry_later(429, TOO_MANY_STREAMS, str(exc), RETRY_AFTER_S)
        raise error from exc


async def open_ready_watch(hub: EventHub, owner_id: str, job_ids: Iterable[str] = (),
                           batch_ids: Iterable[str] = ()) -> Watch:
    """`open_watch`, once the hub's subscription is live (at most `READY_TIMEOUT_S`: a cold start, Redis down)."""
    watch = open_watch(hub, owner_id, job_ids, batch_ids)
    try:
        await hub.ready(READY_TIMEOUT_S)
    except BaseException:
        watch.close()
        raise
    return watch


async def wait_until(hub: EventHub, watch: Watch, read: Callable[[], T], done: Callable[[T], bool],
                     seconds: float) -> T:
    """`read()` until `done(value)` or `seconds` pass; the last value read. Closes `watch`."""
    deadline = time.monotonic() + seconds
    step = RECONCILE_SECONDS if hub.push else POLL_SECONDS
    with watch:
        value = await run_in_threadpool(read)
        while not done(value):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wake = await watch.wait(min(step, left))
            if wake.dropped:
                break
            value = await run_in_threadpool(read)
    return value
