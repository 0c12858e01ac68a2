"""Job events on Redis pub/sub, published after the transaction that made them commits.

`JobStore`'s compare-and-set helpers call `note(s, row, values)` for every job row they change; the notes live in
the session (`Session.info`) until it commits. A session factory that has a publisher attached
(`attach(sessions, publisher)`, done once per process by whoever builds the factory: the API, a worker, the
sweeper) then publishes them, one pipeline per transaction; a rollback drops them. Publishing is best effort: an
error is logged and never fails (or undoes) the state change, and after one failure the publisher stays quiet for
`PAUSE_AFTER_FAILURE_S` so a Redis outage costs the state machine nothing. Readers treat an event as a hint to
re-read Postgres (the truth) and reconcile on a slow timer, so a lost message only delays a stream.

Channels: `{prefix}ev:job:{job_id}` and, for a job of a batch, `{prefix}ev:batch:{batch_id}` too. A message is
JSON `{"type": "status"|"progress"|"update", "job_id", "batch_id", "custom_id", "status", "step", "total"}`.
Queue wake-ups: a transaction that makes jobs claimable in a queue (created, requeued, released) also publishes
`{"type": "queued", "queue", "jobs": n, "owners": {owner id: highest priority}}` on `{prefix}ev:queue:{queue}`,
once per queue with the count, so the gateway's long-polling claims of that queue wake instead of polling
(`note_queued`); `owners` (the keys whose jobs became claimable, left out above WAKEUP_OWNERS_MAX of them) lets a
full running set that holds every one of those keys at that priority skip its newcomer claim, which could only
find nothing (`workers.runner.continuous`). Cancel hints: a transaction
that asks running jobs to stop (`cancel_requested`) also publishes `{"type": "cancel", "job_ids": [...], "workers":
[...]}` on `{prefix}ev:cancel` (`workers`: the worker ids running those jobs, so the API's hub wakes the long-polls
of just those gateway workers: `api.events.hub`), so a worker hears a cancel instead of reading Postgres every step
for one (a fleet of workers polling once a step would cost the database thousands of reads a second for nothing). A publisher that failed (or
stayed quiet after a failure) sends `{"type": "resync"}` there with its next successful publish: hints may have been
lost, and a worker that trusts them reads cancel requests at once.
Without Redis (`settings.redis_url` empty: the embedded mode) nothing is attached and readers poll.
Knows nothing of HTTP, streams or the API's fan-out (`api.events.hub`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from storage.jobs.publishing import BackgroundPublisher
from storage.settings import Settings
from storage.states import JobStatus
from storage.tables import Job

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "ev:"
PAUSE_AFTER_FAILURE_S = 2.0
# a (new) subscription to cancel hints is trusted this long after it began: a Redis restart also made publishers
# fail, and each stays quiet for PAUSE_AFTER_FAILURE_S after (its next publish then says so: a resync hint)
TRUST_HINTS_AFTER_S = PAUSE_AFTER_FAILURE_S + 0.5
_NOTES = "unipic_job_events"
_QUEUED = "unipic_queue_wakeups"
_CANCELS = "unipic_cancel_hints"
WAKEUP_OWNERS_MAX = 32  # keys named in one queue wake-up; a transaction of more names none (a listener claims)
CANCEL_HINT_IDS = 1000  # job ids per cancel message: a canceled batch of thousands is a few messages
_ATTACHED = "unipic_job_events_attached"


def channel_prefix(redis_url: str) -> str:
    """`unipic:{db}:` for the Redis db in `redis_url`: PUBLISH ignores the db number, so two deployments (or two
    test sessions) on one Redis server with their own dbs would otherwise wake each other's queues."""
    from urllib.parse import urlparse

    path = urlparse(redis_url).path.strip("/")
    return f"unipic:{int(path) if path.isdigit() else 0}:"


def job_channel(prefix: str, job_id: str) -> str:
    """The channel carrying one job's events."""
    return f"{prefix}{CHANNEL_PREFIX}job:{job_id}"


def batch_channel(prefix: str, batch_id: str) -> str:
    """The channel carrying the events of every job of one batch."""
    return f"{prefix}{CHANNEL_PREFIX}batch:{batch_id}"


def queue_channel(prefix: str, queue: str) -> str:
    """The channel on which a queue's wake-ups (jobs became claimable there) go."""
    return f"{prefix}{CHANNEL_PREFIX}queue:{queue}"


def cancel_channel(prefix: str) -> str:
    """The channel on which cancel hints (running jobs asked to stop) go."""
    return f"{prefix}{CHANNEL_PREFIX}cancel"


def channel_pattern(prefix: str) -> str:
    """The pattern one subscriber uses to hear every job and batch channel."""
    return f"{prefix}{CHANNEL_PREFIX}*"


def event_type(values: Mapping[str, Any]) -> str | None:
    """What a compare-and-set that wrote `values` tells a watcher: None for lease renewals and the like."""
    if "status" in values:
        return "status"
    if "progress_step" in values:
        return "progress"
    if "cancel_requested" in values:
        return "update"
    return None


def note(s: Session, row: Job, values: Mapping[str, Any]) -> None:
    """Remember that `row` changed (with `values`) in this session's transaction; published after commit."""
    kind = event_type(values)
    if kind is None or not s.info.get(_ATTACHED):
        return
    s.info.setdefault(_NOTES, []).append({
        "type": kind, "job_id": row.id, "batch_id": row.batch_id, "custom_id": row.custom_id,
        "status": str(row.status), "step": row.progress_step, "total": row.progress_total,
    })
    if values.get("status") == JobStatus.QUEUED:  # requeued or released: claimable again
        note_queued(s, [(row.queue, row.owner_id, row.priority)])
    if values.get("cancel_requested") is True:  # its worker should stop it at its next step
        s.info.setdefault(_CANCELS, []).append((row.id, row.worker_id))


@dataclass(slots=True)
class QueuedNote:
    """One queue's claimable jobs of a transaction: how many, and each key's highest priority among them."""

    jobs: int = 0
    owners: dict[str, int] = field(default_factory=dict)


def note_queued(s: Session, jobs: Iterable[tuple[str, str, int]]) -> None:
    """Remember that these jobs, (queue, owner id, priority) each, became claimable in this transaction; after
    commit each queue gets one wake-up message carrying its count and the keys with their highest priority."""
    if not s.info.get(_ATTACHED):
        return
    queued: dict[str, QueuedNote] = s.info.setdefault(_QUEUED, {})
    for queue, owner, priority in jobs:
        note = queued.setdefault(queue, QueuedNote())
        note.jobs += 1
        note.owners[owner] = max(note.owners.get(owner, priority), priority)


def queued_events(queued: Mapping[str, QueuedNote]) -> list[dict[str, Any]]:
    """The wake-up messages for a transaction's queues."""
    events = []
    for queue, note in sorted(queued.items()):
        if note.jobs > 0:
            message: dict[str, Any] = {"type": "queued", "queue": queue, "jobs": note.jobs}
            if len(note.owners) <= WAKEUP_OWNERS_MAX:
                message["owners"] = note.owners
            events.append(message)
    return events


def cancel_events(jobs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
    """The cancel-hint messages for a transaction's running jobs asked to stop, as (job id, worker id)."""
    events = []
    for i in range(0, len(jobs), CANCEL_HINT_IDS):
        chunk = jobs[i : i + CANCEL_HINT_IDS]
        events.append({"type": "cancel", "job_ids": [job_id for job_id, _ in chunk],
                       "workers": sorted({worker for _, worker in chunk if worker})})
    return events


class Publisher(Protocol):
    """Sends a committed transaction's events; must not raise."""

    def publish(self, events: Sequence[dict[str, Any]]) -> None: ...


class RedisPublisher:
    """PUBLISH each event on its job channel (and batch channel), one pipeline per call, best effort."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.prefix = channel_prefix(url)
        self._quiet_until = 0.0
        self._lost = False  # events were dropped since the last successful publish: the next one says so
        self._lock = threading.Lock()
        self.published = 0

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        if time.monotonic() < self._quiet_until:
            self._lost = True
            return
        with self._lock:
            lost, self._lost = self._lost, False  # a loss told from now on is told by the next publish
        try:
            pipe = self.client.pipeline(transaction=False)
            if lost:  # cancel hints may have been dropped: workers read cancel requests now
                pipe.publish(cancel_channel(self.prefix), json.dumps({"type": "resync"}))
            for ev in events:
                body = json.dumps(ev, separators=(",", ":"))
                if ev.get("type") == "queued":
                    pipe.publish(queue_channel(self.prefix, ev["queue"]), body)
                    continue
                if ev.get("type") == "cancel":
                    pipe.publish(cancel_channel(self.prefix), body)
                    continue
                pipe.publish(job_channel(self.prefix, ev["job_id"]), body)
                if ev.get("batch_id"):
                    pipe.publish(batch_channel(self.prefix, ev["batch_id"]), body)
            pipe.execute()
            self.published += len(events)
        except Exception as exc:  # noqa: BLE001 - best effort: watchers reconcile from Postgres
            with self._lock:
                self._lost = True
                self._quiet_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
            log.warning("could not publish %d job events (%s); watchers will reconcile", len(events), exc)

    def mark_lost(self) -> None:
        """Events were dropped before reaching `publish` (`storage.jobs.publishing`): the next publish says so."""
        with self._lock:
            self._lost = True

    def close(self) -> None:
        self.client.close()


def attach(sessions: sessionmaker[Session], publisher: Publisher) -> None:
    """Publish the job events of every transaction of `sessions` once it commits (idempotent per factory)."""
    if sessions.kw.get("info", {}).get(_ATTACHED):
        return
    sessions.configure(info={**sessions.kw.get("info", {}), _ATTACHED: True})

    def after_commit(session: Session) -> None:
        events = session.info.pop(_NOTES, None) or []
        events += queued_events(session.info.pop(_QUEUED, None) or {})
        events += cancel_events(session.info.pop(_CANCELS, None) or [])
        if events:
            publisher.publish(events)

    def after_rollback(session: Session) -> None:
        session.info.pop(_NOTES, None)
        session.info.pop(_QUEUED, None)
        session.info.pop(_CANCELS, None)

    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_rollback", after_rollback)


def attach_from_settings(sessions: sessionmaker[Session], settings: Settings) -> BackgroundPublisher | None:
    """Attach a Redis publisher when `settings.redis_url` is set (else nothing: readers poll); returns it. It
    publishes on its own thread (`storage.jobs.publishing`): a commit never waits for Redis."""
    if not settings.redis_url:
        return None
    publisher = BackgroundPublisher(RedisPublisher(settings.redis_url))
    attach(sessions, publisher)
    return publisher
