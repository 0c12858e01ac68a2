"""The sweeper: puts the queue back in line with Postgres, the source of truth.

Each pass (a Celery beat task in `workers.cpu`, or a plain loop with `unipic sweeper` for the embedded stack):
1. running jobs whose lease expired go back to `queued` with attempts+1 (or fail `worker_lost` at the maximum)
   and get a fresh message;
2. queued jobs past their deadline become `expired`;
3. queued jobs with no live message (e.g. after Redis lost its data, or a send failed) are re-enqueued: a queue
   whose broker holds fewer messages than it has queued jobs is sent the difference (`reenqueue_lost`);
4. workers whose heartbeat is older than three intervals are marked gone;
5. the data lifecycle (storage.lifecycle.store): expired upload slots and results older than `result_ttl` are
   deleted, and so are the objects stale attempts wrote under a finished job's `results/{job}/` that it does not
   record (once no stale lease's write can still land: two lease lengths after it finished),
   `lifecycle_batch_size` jobs at most per pass for each.
Duplicate messages are harmless: a message whose job was already claimed is a no-op. Torch-free.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from storage.db import make_engine, make_session_factory
from storage.fleet.registry import WorkerRegistry
from storage.jobs.events import attach_from_settings
from storage.jobs.store import JobStore
from storage.lifecycle.store import Lifecycle
from storage.objects.base import ObjectStore, make_object_store
from storage.records import JobRecord
from storage.routing import SWEEP_TASK, send_and_stamp
from storage.settings import Settings
from storage.states import JobStatus
from storage.status.queries import StatusQueries
from workers.app import make_celery

log = logging.getLogger(__name__)

HEARTBEATS_BEFORE_GONE = 3
REENQUEUE_PER_PASS = 1000  # messages a pass sends to queues short of them
# a stale lease's presigned PUT lives at most one lease length, a direct worker's proof of its lease less than one:
# two lease lengths after a job finished, nothing can write under its results any more
STALE_WRITE_LEASES = 2


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    reenqueued: list[str] = field(default_factory=list)
    workers_gone: list[str] = field(default_factory=list)
    uploads_expired: int = 0
    purged: list[str] = field(default_factory=list)


@dataclass
class Sweeper:
    store: JobStore
    registry: WorkerRegistry
    celery: Celery
    settings: Settings
    objects: ObjectStore

    @classmethod
    def from_settings(cls, settings: Settings, celery: Celery | None = None) -> Sweeper:
        sessions = make_session_factory(make_engine(settings))
        attach_from_settings(sessions, settings)  # requeued/expired jobs wake their streams (storage.jobs.events)
        return cls(JobStore(sessions), WorkerRegistry(sessions), celery or make_celery(settings), settings,
                   make_object_store(settings))

    def sweep(self) -> SweepReport:
        """One pass; returns what it did."""
        report = SweepReport()
        report.requeued = self.store.requeue_expired()
        if report.requeued:
            self._enqueue([j for j in self.store.get_many(report.requeued) if j.status == JobStatus.QUEUED])
        report.expired = self.store.expire_overdue()
        report.reenqueued = self.reenqueue_lost()
        report.workers_gone = self._mark_gone_workers()
        report.uploads_expired, report.purged = self._apply_lifecycle()
        if any((report.requeued, report.expired, report.reenqueued, report.workers_gone)):
            log.info(
                "sweep: requeued %s, expired %s, re-enqueued %d stale, workers gone %s",
                report.requeued, report.expired, len(report.reenqueued), report.workers_gone,
            )
        return report

    def reenqueue_lost(self) -> list[str]:
        """Send queued jobs whose messages are gone a fresh one; returns their ids. A message is a wake-up for its
        queue (any message claims the queue's best jobs), so what counts is how many messages a queue has against
        how many jobs it holds queued, not which job a message names: a queue whose broker holds at least as many
        messages as queued jobs lost none, however old its backlog. (Judged by age alone, every job of a backlog
        older than `requeue_after_seconds` was sent again, REENQUEUE_PER_PASS a pass for as long as the backlog
        lasted: `bench.fairness`'s 9,000-item bulk got 1,000 duplicate messages a second, each a claim later, and
        their stamps locked rows the claims then skip.) A queue short of messages is sent the shortfall, for its
        jobs longest without a send and older than `requeue_after_seconds` (a job whose API send is still in
        flight is not raced), at most REENQUEUE_PER_PASS in all per pass."""
        queued = {queue: n["queued"] for queue, n in StatusQueries(self.store.sessions).active_by_queue().items()
                  if n["queued"]}  # the status page's count per queue
        depths = self._broker_depths(sorted(queued))
        jobs: list[JobRecord] = []
        for queue, count in sorted(queued.items()):
            missing = min(count - depths.get(queue, 0), REENQUEUE_PER_PASS - len(jobs))
            if missing > 0:
                jobs += self.store.stale_queued(self.settings.requeue_after_seconds, limit=missing, queue=queue)
        return self._enqueue(jobs)

    def _broker_depths(self, queues: list[str]) -> dict[str, int]:
        """Messages waiting in the broker for each queue (kombu's passive declare: every priority's Redis list, the
        SQLAlchemy transport's visible rows); a queue the broker does not know holds none. Messages a worker holds
        unacknowledged are not counted (a queue may be sent a few more than it lacked; a duplicate is a no-op).
        When the broker cannot be asked: none known, so every stale job is sent again, as before."""
        depths: dict[str, int] = {}
        try:
            with self.celery.connection_for_read() as conn:
                channel: Any = conn.default_channel  # a virtual (Redis, SQLAlchemy) or AMQP channel
                for queue in queues:
                    try:
                        depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                    except ChannelError:  # never declared, or emptied (Redis drops an empty list)
                        depths[queue] = 0
        except Exception as exc:  # noqa: BLE001 - the broker is down: the sends below fail and are retried too
            log.warning("could not read the broker's queue depths (%s): re-enqueueing by age alone", exc)
            return {}
        return depths

    def _enqueue(self, jobs: list[JobRecord]) -> list[str]:
        # send, then stamp (the enqueue contract in storage.routing)
        if not jobs:
            return []
        return send_and_stamp(self.celery, self.store, [j.ref for j in jobs])

    def _apply_lifecycle(self) -> tuple[int, list[str]]:
        """Expired upload slots and results past `result_ttl`, a bounded batch each (storage.lifecycle.store)."""
        lifecycle = Lifecycle(self.store.sessions, self.objects)
        limit = self.settings.lifecycle_batch_size
        try:
            uploads = lifecycle.expire_uploads(limit=limit)
            purged = lifecycle.purge_expired(self.settings.result_ttl, limit=limit)
            lifecycle.sweep_stale_results(STALE_WRITE_LEASES * self.settings.lease_seconds, limit=limit)
        except Exception:
            log.exception("data lifecycle pass failed; retrying next pass")
            return 0, []
        return uploads, purged

    def _mark_gone_workers(self) -> list[str]:
        """Workers not stopped whose heartbeat is older than a few intervals: record them as stopped."""
        threshold = HEARTBEATS_BEFORE_GONE * self.settings.heartbeat_seconds
        live = {w.id for w in self.registry.live(threshold)}
        gone = [w.id for w in self.registry.all() if w.stopped_at is None and w.id not in live]
        for worker_id in gone:
            log.warning("worker %s: no heartbeat for %.0fs, marked gone", worker_id, threshold)
            self.registry.stop(worker_id)
        return gone

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Sweep every `sweep_interval_seconds` until `stop` is set; a failed pass is logged and retried."""
        stop = stop or threading.Event()
        log.info("sweeper running every %.1fs", self.settings.sweep_interval_seconds)
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("sweep failed; retrying next interval")
            if stop.wait(self.settings.sweep_interval_seconds):
                return


def register(app: Celery, settings: Settings) -> None:
    """Add the sweep task to a (CPU) Celery app, built lazily on its first run."""
    holder: dict[str, Sweeper] = {}

    @app.task(name=SWEEP_TASK, ignore_result=True, acks_late=False)
    def sweep() -> SweepReport:  # the report feeds workers.cpu_metrics (task_postrun); results are ignored
        if "sweeper" not in holder:
            holder["sweeper"] = Sweeper.from_settings(settings, celery=app)
        return holder["sweeper"].sweep()

    app.conf.beat_schedule = {
        **(app.conf.beat_schedule or {}),
        "unipic-sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
    }
