"""JobStore: the job state machine, and the only code that changes a job's `status`.

```
              create
                │
                ▼          claim_next (CAS, SKIP LOCKED)
            ┌────────┐ ─────────────────────────────────► ┌─────────┐ ── complete ──► succeeded
            │ queued │                                    │ running │ ── fail ──────► failed
            └────────┘ ◄── requeue_expired (attempts+1) ─ └─────────┘ ── cancel_running ► canceled
             │     │   ◄── release (graceful, same attempts)   │
             │     │                                           └─ requeue_expired at max_attempts
             │     └── expire_overdue (past deadline_at) ──► expired     ──► failed (worker_lost)
             └── request_cancel ──► canceled        (request_cancel on running sets cancel_requested)
```
A running job that leaves its worker with a cancel request the worker never acknowledged (released, or its lease
lost) ends canceled, not queued: its owner asked to stop it, and a claim would forget the request.
Terminal states (succeeded, failed, canceled, expired) are final. Every move is a compare-and-set
`UPDATE ... WHERE id=:id AND status=:expected [AND lease_token=:token] RETURNING *`; a running job's writes are
fenced by the `lease_token` its claim got, so a worker whose lease expired can never overwrite a newer state.
Webhook outbox rows (job.started/succeeded/failed/canceled, batch.completed) are written in the same
transaction; when a batch's last job turns terminal, the batch is finished in that transaction too.
Canceling a batch (`cancel_batch`) is the same per-job transitions applied to every job of the batch at once.
Which queued jobs a claim takes is `storage.scheduling.policy`'s policy (`claim_next`; a `run_batch` message claims its
job's queue through `claim_for_message`); the claim charges the fair-share counters (`storage.scheduling.fair_share`) in the
same transaction. Postgres claims with `FOR UPDATE SKIP LOCKED` (waiting for a lock only when nothing else is
claimable; a claim Postgres aborts as a deadlock with another claim is retried); SQLite serializes writers with
`BEGIN IMMEDIATE`. Statuses, event types and error codes come from
`storage.states`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import dialect
from storage.batches.completion import finish_batch_if_done
from storage.db import retry_deadlocks, write_session
from storage.errors import Conflict, ForeignResultKeys, IdempotencyConflict, IllegalTransition, NotFound
from storage.jobs import events as job_events
from storage.jobs.ids import new_id
from storage.jobs.queries import JobQueries
from storage.lifecycle.quota import enforce_quotas
from storage.objects.base import lease_of_result_key, lease_prefix
from storage.records import BatchRecord, Claim, JobRecord, NewBatch, NewJob
from storage.routing import model_of_queue
from storage.scheduling import fair_share
from storage.scheduling import policy as scheduling
from storage.states import TERMINAL_STATUSES, BatchStatus, EventType, JobErrorCode, JobStatus
from storage.tables import Batch, Job, utcnow
from storage.webhooks.outbox import OutboxWriter

log = logging.getLogger(__name__)

ANALYZE_AFTER_ROWS = 1000  # a bulk insert of this many jobs refreshes the planner's statistics of the table

__all__ = ["Claim", "HeldModel", "JobRecord", "JobStore", "NewBatch", "NewJob", "pixels_of"]


def pixels_of(kind: str, params: dict[str, Any]) -> int:
    """What a job weighs in a batch's pixel budget: width*height*num_images (understand: size*size)."""
    if kind == "understand":
        size = int(params.get("size", 0))
        return size * size
    return int(params.get("width", 0)) * int(params.get("height", 0)) * int(params.get("num_images", 1))


@dataclass(frozen=True)
class HeldModel:
    """The model a worker's store holds (its routing key, `storage.routing.served_model`; None: the default)."""

    key: str | None


class JobStore(JobQueries):
    """Creates, reads and moves jobs. Thread-safe: every call runs in its own session and transaction. A model
    worker's store holds its model (`held`): a message for a job of another model then claims nothing."""

    def __init__(self, session_factory: sessionmaker[Session], held: HeldModel | None = None) -> None:
        super().__init__(session_factory)
        self.held = held

    # ---- creating -------------------------------------------------------------------------------------------
    def create(self, new: NewJob) -> JobRecord:
        """Insert one queued job. With an idempotency key: the same key and request hash returns the existing
        job; the same key with another hash raises `IdempotencyConflict`."""
        if new.idempotency_key:
            existing = self._by_idempotency_key(new)
            if existing is not None:
                return existing
        try:
            with write_session(self.sessions) as s:
                row = Job(**self._values(new, utcnow(), None))
                s.add(row)
                s.flush()
                fair_share.activate(s, [(row.queue, row.owner_id)])
                job_events.note_queued(s, [(row.queue, row.owner_id, row.priority)])  # wakes the queue's long-polling claims after commit
                record = JobRecord.of(row)
        except IntegrityError:
            if new.idempotency_key:  # lost a race with the same key
                existing = self._by_idempotency_key(new)
                if existing is not None:
                    return existing
            raise
        log.info("job %s created kind=%s owner=%s", record.id, record.kind, record.owner_id)
        return record

    def _by_idempotency_key(self, new: NewJob) -> JobRecord | None:
        with self.sessions() as s:
            stmt = select(Job).where(Job.owner_id == new.owner_id, Job.idempotency_key == new.idempotency_key)
            row = s.scalars(stmt).first()
            if row is None:
                return None
            if row.request_hash != new.request_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request", job_id=row.id
                )
            return JobRecord.of(row)

    def create_many(
        self, news: Sequence[NewJob], batch: NewBatch | None = None, quotas: Mapping[str, int] | None = None
    ) -> tuple[BatchRecord | None, list[JobRecord]]:
        """Insert a batch row (optional) and all its jobs in one transaction (all or nothing). With `quotas`
        (owner id -> most active jobs), raises `storage.lifecycle.quota.QuotaExceeded` instead of going over one."""
        now = utcnow()
        batch_record = None
        with write_session(self.sessions) as s:
            if quotas:
                enforce_quotas(s, quotas, Counter(n.owner_id for n in news))
            batch_id = None
            if batch is not None:
                batch_row = Batch(
                    id=batch.id or new_id(), owner_id=batch.owner_id, status=BatchStatus.IN_PROGRESS, total=len(news),
                    webhook_url=batch.webhook_url, webhook_events=batch.webhook_events,
                    metadata_=batch.metadata, created_at=now,
                    idempotency_key=batch.idempotency_key, request_hash=batch.request_hash,
                )
                s.add(batch_row)
                s.flush()
                batch_id = batch_row.id
                batch_record = BatchRecord.of(batch_row, {JobStatus.QUEUED.value: len(news)})
            values = [self._values(n, now, batch_id) for n in news]
            if values:
                s.execute(insert(_JOBS_TABLE), [_column_values(v) for v in values])
                fair_share.activate(s, {(v["queue"], v["owner_id"]) for v in values}, now)
                job_events.note_queued(s, [(v["queue"], v["owner_id"], v["priority"]) for v in values])
        records = [_record_from_values(v) for v in values]
        log.info("created %d jobs batch=%s", len(records), batch_id)
        if len(records) >= ANALYZE_AFTER_ROWS:
            self._refresh_statistics()
        return batch_record, records

    def _refresh_statistics(self) -> None:
        """Show the planner a bulk insert at once (`dialect.refresh_statistics`); the jobs are committed already,
        so nothing here may fail the submission."""
        try:
            with self.sessions() as s:
                dialect.refresh_statistics(s, Job.__tablename__)
        except Exception as exc:  # noqa: BLE001 - autoanalyze gets there later; the claims are only slower meanwhile
            log.warning("could not refresh the jobs table's statistics: %s", exc)

    @staticmethod
    def _values(new: NewJob, now: datetime, batch_id: str | None) -> dict[str, Any]:
        return {
            "id": new.id or new_id(), "owner_id": new.owner_id, "batch_id": batch_id, "custom_id": new.custom_id,
            "kind": new.kind, "status": JobStatus.QUEUED.value, "priority": new.priority, "params": new.params,
            "compat_key": new.compat_key, "queue": new.queue, "attempts": 0, "max_attempts": new.max_attempts,
            "cancel_requested": False, "created_at": now, "queued_at": now, "deadline_at": new.deadline_at,
            "seed": new.seed, "webhook_url": new.webhook_url, "webhook_events": new.webhook_events,
            "metadata_": new.metadata, "idempotency_key": new.idempotency_key, "request_hash": new.request_hash,
            "input_key": new.input_key, "pixels": new.pixels or pixels_of(new.kind, new.params),
            "model": new.model,
        }

    # ---- claiming and leases --------------------------------------------------------------------------------
    @retry_deadlocks
    def claim_next(
        self, queue: str, worker_id: str, lease_seconds: float, max_items: int, max_pixels: int,
        claim_id: str | None = None, above: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        """Claim the next batch of `queue` as `storage.scheduling.policy` decides (fair share across keys, then
        priority and age; compatible batch-mates in the same order), charging each key in the same transaction.
        `claim_id` (the worker's id for this claim) is stored with the lease (`claimed_by`). Empty only when the
        queue has no claimable job (of a key in `above`, above its priority there)."""
        now = utcnow()
        with write_session(self.sessions) as s:
            picked = scheduling.pick(s, queue, now, max_items, max_pixels, above)
            claims = self._start(s, picked.rows, worker_id, lease_seconds, now, claim_id)
            _charge(s, picked.rows, claims, now, picked.weights)
        if picked.idle_owners:
            self._forget_idle(queue, picked.idle_owners)
        log.debug("worker %s claimed %d jobs of %s %s", worker_id, len(claims), queue, [c.job_id for c in claims])
        return claims

    def claim_for_message(
        self, job_id: str, worker_id: str, lease_seconds: float, max_items: int, max_pixels: int,
        kinds: Sequence[str] | None = None, wait_seconds: float = 0.0,
    ) -> list[Claim]:
        """A `run_batch(job_id)` message is a wake-up for its job's queue: `claim_next` on that queue, whatever
        the job's own state; never waits (`wait_seconds` is the gateway's: a direct worker hears wake-ups).
        Empty for an unknown job, a kind this worker does not serve, a queue of a model this store does not hold
        (`held`), or an empty queue; the read of the job says whether the queue is worth a claim at all
        (`scheduling.worth_claiming`), so a bulk's left-over messages cost one statement each, not a claim's four."""
        with self.sessions() as s:
            found = s.execute(select(Job.queue, Job.kind, scheduling.worth_claiming(Job.queue).label("worth"))
                              .where(Job.id == job_id)).first()
        if found is None or (kinds is not None and found.kind not in kinds):
            return []
        if not found.worth:
            log.debug("message for job %s: queue %s has nothing queued: no claim", job_id, found.queue)
            return []
        if self.held is not None and model_of_queue(found.queue) != self.held.key:
            log.warning("a message for job %s of queue %s reached a worker holding model %s: claimed nothing",
                        job_id, found.queue, self.held.key or "(default)")
            return []
        return self.claim_next(found.queue, worker_id, lease_seconds, max_items, max_pixels)

    def queues_worth_claiming(self, queues: Sequence[str]) -> set[str]:
        """Those of `queues` a claim could do anything in (`scheduling.worth_claiming`), in one read of an index
        probe each: a continuous loop that asks the worker's other queues in turn (`workers.runner.continuous`)
        claims only these, instead of one empty claim transaction per idle queue ahead of its own claim."""
        if not queues:
            return set()
        names = list(dict.fromkeys(queues))
        with self.sessions() as s:
            row = s.execute(select(*(scheduling.worth_claiming(q) for q in names))).one()
        return {q for q, worth in zip(names, row, strict=True) if worth}

    def claimed_by(self, claim_id: str, worker_id: str) -> list[Claim]:
        """The jobs a claim with this id already took for this worker and still holds (a retried claim whose
        answer was lost gets the same jobs and leases back, instead of a second batch)."""
        with self.sessions() as s:
            rows = s.execute(select(Job.id, Job.lease_token).where(
                Job.claim_id == claim_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING,
            ).order_by(Job.id)).all()
        return [Claim(job_id, token) for job_id, token in rows if token]

    def claim_newcomer(self, queue: str | None, worker_id: str, lease_seconds: float, max_pixels: int,
                       held: Collection[str], wait_seconds: float = 0.0) -> list[Claim]:
        """One job of `queue` of a key none of the `held` jobs (this worker's) belongs to, or of such a key above
        every priority the held jobs have there: a full running set's newcomer (`workers.runner.continuous`: a key's
        interactive job beside its own bulk). Never waits: a direct worker hears the queue's wake-ups, each
        queue's (so it names one; only a gateway, which knows the token's queues, takes None)."""
        if queue is None:
            raise ValueError("a direct newcomer claim names its queue")
        return self.claim_next(queue, worker_id, lease_seconds, 1, max_pixels,
                               above=self.owners_held(held, worker_id))

    def owners_held(self, job_ids: Collection[str], worker_id: str) -> dict[str, int]:
        """The keys of those of `job_ids` this worker holds (running under its id), each with the highest priority
        held of it: what a remote worker's running set already serves, without the worker knowing the keys."""
        if not job_ids:
            return {}
        with self.sessions() as s:
            rows = s.execute(select(Job.owner_id, func.max(Job.priority)).where(
                Job.id.in_(list(job_ids)), Job.worker_id == worker_id, Job.status == JobStatus.RUNNING,
            ).group_by(Job.owner_id)).tuples().all()
        return {owner: int(priority) for owner, priority in rows}

    def _forget_idle(self, queue: str, owner_ids: list[str]) -> None:
        """Drop the fair-share rows of keys a claim found with nothing queued (own transaction, best effort)."""
        try:
            with write_session(self.sessions) as s:
                fair_share.forget(s, queue, owner_ids)
        except Exception as exc:  # noqa: BLE001 - housekeeping only; the next claim tries again
            log.warning("could not forget idle keys of %s: %s", queue, exc)

    @staticmethod
    def _start(s: Session, rows: list[Job], worker_id: str, lease_seconds: float, now: datetime,
               claim_id: str | None = None) -> list[Claim]:
        """queued -> running for the chosen rows in ONE compare-and-set statement. The rows of one claim share
        its fencing token (new per claim, so a job re-claimed after a requeue still gets a new one)."""
        if not rows:
            return []
        token = new_id()
        waited = {r.id: (now - (r.queued_at or r.created_at)).total_seconds() for r in rows}
        stmt = (update(Job).where(Job.id.in_(list(waited)), Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, started_at=now, worker_id=worker_id, lease_token=token,
                        lease_expires_at=now + timedelta(seconds=lease_seconds), batch_size=len(rows),
                        progress_step=0, cancel_requested=False, queue_seconds=case(waited, value=Job.id),
                        claim_id=claim_id)
                .returning(Job))
        started = {r.id: r for r in s.scalars(stmt, execution_options={"populate_existing": True,
                                                                       "synchronize_session": False})}
        outbox = OutboxWriter(s)
        outbox.prime_owners(r.owner_id for r in rows if not r.webhook_url)
        claims = []
        for row in rows:
            if row.id in started:
                claims.append(Claim(row.id, token))
                outbox.job_event(started[row.id], EventType.JOB_STARTED, now)
                job_events.note(s, started[row.id], {"status": JobStatus.RUNNING})  # published after commit
        return claims

    def renew(self, claims: Iterable[Claim], lease_seconds: float) -> list[Claim]:
        """Extend the leases still held; the ones missing from the result were lost (stop working on them)."""
        now = utcnow()
        held = []
        with write_session(self.sessions) as s:
            for claim in sorted(claims, key=lambda c: c.job_id):  # rows locked in id order, as set_progress_many
                if _cas(s, claim.job_id, JobStatus.RUNNING, claim.lease_token,
                        lease_expires_at=now + timedelta(seconds=lease_seconds)) is not None:
                    held.append(claim)
        return held

    def set_progress(self, claim: Claim, step: int, total: int) -> bool:
        """Record sampling progress (best effort; the caller throttles). The step is clamped to [0, total] and a
        report without a positive total is ignored (True: nothing to record). False if the claim is stale."""
        return claim.job_id in self.set_progress_many([(claim, step, total)])

    def set_progress_many(self, reports: Sequence[tuple[Claim, int, int]]) -> set[str]:
        """`set_progress` of several jobs in one transaction (a running set's items advance together: one commit
        and one event publish for all of them instead of one each). Each row is fenced by its own lease: a stale
        claim changes nothing and does not stop the others. Returns the ids whose claim held (or had no total)."""
        held: set[str] = set()
        with write_session(self.sessions) as s:  # rows locked in id order: a worker's renewals lock them so too
            for claim, step, total in sorted(reports, key=lambda r: r[0].job_id):
                if total <= 0 or _cas(s, claim.job_id, JobStatus.RUNNING, claim.lease_token,
                                      progress_step=max(0, min(step, total)), progress_total=total) is not None:
                    held.add(claim.job_id)
        return held

    # ---- finishing ------------------------------------------------------------------------------------------
    def complete(
        self, claim: Claim, result_keys: Sequence[str], result_text: str | None = None,
        timings: dict[str, float] | None = None, model_id: str | None = None, model_revision: str | None = None,
    ) -> bool:
        """running -> succeeded (objects must already be written, under this claim's own lease prefix:
        `ForeignResultKeys` otherwise). The keys are recorded in the compare-and-set that fences the state, so
        only the lease that completes decides what is served. False if the claim is stale."""
        foreign = [k for k in result_keys if lease_of_result_key(k) != (claim.job_id, claim.lease_token)]
        if foreign:
            raise ForeignResultKeys(f"job {claim.job_id}: results must be written under "
                                    f"{lease_prefix(claim.job_id, claim.lease_token)}", keys=foreign)
        timings = timings or {}
        return self._finish(
            claim, JobStatus.SUCCEEDED, EventType.JOB_SUCCEEDED, result_keys=list(result_keys), result_text=result_text,
            model_seconds=timings.get("model_seconds"), upload_seconds=timings.get("upload_seconds"),
            model_id=model_id, model_revision=model_revision,
        )

    def fail(self, claim: Claim, code: JobErrorCode, message: str) -> bool:
        """running -> failed with a stable error code. False if the claim is stale."""
        return self._finish(claim, JobStatus.FAILED, EventType.JOB_FAILED, error_code=code,
                            error_message=message[:4000])

    def cancel_running(self, claim: Claim) -> bool:
        """The worker acknowledges a cancel request: running -> canceled. False if the claim is stale."""
        return self._finish(claim, JobStatus.CANCELED, EventType.JOB_CANCELED, error_code=JobErrorCode.CANCELED,
                            error_message="canceled by request")

    def _finish(self, claim: Claim, status: JobStatus, event: EventType, **values: Any) -> bool:
        now = utcnow()
        with write_session(self.sessions) as s:
            row = _cas(s, claim.job_id, JobStatus.RUNNING, claim.lease_token, status=status, finished_at=now,
                       lease_token=None, lease_expires_at=None, **values)
            if row is None:
                log.warning("job %s: stale claim, %s refused", claim.job_id, status)
                return False
            outbox = OutboxWriter(s)
            outbox.job_event(row, event, now)
            finish_batch_if_done(s, outbox, row.batch_id, now)
        log.info("job %s %s", claim.job_id, status)
        return True

    def release(self, claims: Iterable[Claim]) -> int:
        """Graceful shutdown: running -> queued with attempts unchanged, or -> canceled when its owner asked to
        cancel it (`_canceled_on_leaving`). Returns how many went back to the queue."""
        now = utcnow()
        n = 0
        tokens = {c.job_id: c.lease_token for c in claims}
        with write_session(self.sessions) as s:
            back = []
            outbox = OutboxWriter(s)
            # locked first (in id order, as renewals lock them), so a cancel request cannot slip in between
            rows = s.scalars(select(Job).where(Job.id.in_(list(tokens)), Job.status == JobStatus.RUNNING)
                             .order_by(Job.id).with_for_update(), execution_options={"populate_existing": True})
            for locked in list(rows):
                token = tokens[locked.id]
                if locked.cancel_requested:
                    _canceled_on_leaving(s, outbox, locked.id, token, now)
                    continue
                row = _cas(s, locked.id, JobStatus.RUNNING, token, **_requeue_values(now))
                if row is not None:
                    n += 1
                    back.append((row.queue, row.owner_id))
            fair_share.activate(s, back, now)  # queued again: its key is active again
        log.info("released %d jobs", n)
        return n

    def request_cancel(self, job_id: str, owner_id: str | None) -> JobRecord:
        """Owner's cancel: queued -> canceled at once; running -> cancel_requested (the worker acknowledges);
        terminal -> `IllegalTransition`; missing or another owner's -> `NotFound`."""
        for _ in range(5):  # a concurrent claim or finish moved it: look again
            with write_session(self.sessions) as s:
                record = self._cancel_once(s, job_id, owner_id, utcnow())
            if record is not None:
                return record
        raise Conflict(f"job {job_id} keeps changing state; retry the cancel")

    @staticmethod
    def _cancel_once(s: Session, job_id: str, owner_id: str | None, now: datetime) -> JobRecord | None:
        row = s.get(Job, job_id, populate_existing=True)
        if row is None or (owner_id is not None and row.owner_id != owner_id):
            raise NotFound(f"job {job_id} not found")
        if row.status in TERMINAL_STATUSES:
            raise IllegalTransition(f"job {job_id} is already {row.status}", status=row.status)
        if row.status == JobStatus.RUNNING:
            updated = _cas(s, job_id, JobStatus.RUNNING, row.lease_token, cancel_requested=True)
            if updated is not None:
                log.info("job %s cancel requested while running on %s", job_id, updated.worker_id)
                return JobRecord.of(updated)
            return None
        updated = _cas(s, job_id, JobStatus.QUEUED, None, **_canceled_values(now, "canceled by request"))
        if updated is None:
            return None
        outbox = OutboxWriter(s)
        outbox.job_event(updated, EventType.JOB_CANCELED, now)
        finish_batch_if_done(s, outbox, updated.batch_id, now)
        log.info("job %s canceled while queued", job_id)
        return JobRecord.of(updated)

    def cancel_batch(self, batch_id: str, owner_id: str | None) -> int:
        """Owner's cancel of a whole batch, in one transaction: its queued jobs -> canceled (one compare-and-set
        over them all, outbox `job.canceled` each), its running jobs -> cancel_requested; the batch is marked
        canceled and finished here if nothing is left running. Missing or another owner's -> `NotFound`;
        already finished -> `IllegalTransition`. Returns how many queued jobs were canceled."""
        now = utcnow()
        with write_session(self.sessions) as s:
            batch = s.get(Batch, batch_id)
            if batch is None or (owner_id is not None and batch.owner_id != owner_id):
                raise NotFound(f"batch {batch_id} not found")
            if batch.finished_at is not None:
                raise IllegalTransition(f"batch {batch_id} is already {batch.status}", status=batch.status)
            # job rows are locked before the batch row, as everywhere in storage
            canceled = _cas_batch(s, batch_id, JobStatus.QUEUED, **_canceled_values(now, "batch canceled"))
            _cas_batch(s, batch_id, JobStatus.RUNNING, cancel_requested=True)
            outbox = OutboxWriter(s)
            for job in canceled:
                outbox.job_event(job, EventType.JOB_CANCELED, now)
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.canceled_at.is_(None))
                      .values(canceled_at=now), execution_options={"synchronize_session": False})
            finish_batch_if_done(s, outbox, batch_id, now)
        log.info("batch %s canceled: %d queued jobs canceled", batch_id, len(canceled))
        return len(canceled)

    # ---- sweeping -------------------------------------------------------------------------------------------
    def requeue_expired(self, now: datetime | None = None, limit: int = 500) -> list[str]:
        """Running jobs whose lease expired (oldest first, up to `limit` per call): back to queued with
        attempts+1, or failed `worker_lost` once attempts reach max_attempts. Returns the ids put back in
        the queue (re-enqueue them)."""
        now = now or utcnow()
        requeued = []
        with write_session(self.sessions) as s:
            stmt = (select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
                    .order_by(Job.lease_expires_at).limit(limit).with_for_update(skip_locked=True))
            outbox = OutboxWriter(s)
            back: list[tuple[str, str]] = []
            for row in list(s.scalars(stmt)):
                attempts, lost_worker = row.attempts + 1, row.worker_id
                if row.cancel_requested and row.lease_token is not None:  # locked: no request slips in between
                    _canceled_on_leaving(s, outbox, row.id, row.lease_token, now)
                elif attempts >= row.max_attempts:
                    failed = _cas(s, row.id, JobStatus.RUNNING, row.lease_token, status=JobStatus.FAILED,
                                  finished_at=now, attempts=attempts, lease_token=None, lease_expires_at=None,
                                  error_code=JobErrorCode.WORKER_LOST,
                                  error_message=f"worker lost {attempts} times (last: {lost_worker})")
                    if failed is not None:
                        outbox.job_event(failed, EventType.JOB_FAILED, now)
                        finish_batch_if_done(s, outbox, failed.batch_id, now)
                        log.warning("job %s failed: worker_lost after %d attempts", row.id, attempts)
                elif _cas(s, row.id, JobStatus.RUNNING, row.lease_token, attempts=attempts,
                          **_requeue_values(now)) is not None:
                    requeued.append(row.id)
                    back.append((row.queue, row.owner_id))
                    log.warning("job %s lease expired on %s, requeued (attempt %d)", row.id, lost_worker, attempts)
            fair_share.activate(s, back, now)  # queued again: its key is active again
        return requeued

    def expire_overdue(self, now: datetime | None = None, limit: int = 1000) -> list[str]:
        """Queued jobs past their deadline -> expired (webhook event `job.failed` with status expired)."""
        now = now or utcnow()
        expired = []
        with write_session(self.sessions) as s:
            stmt = (select(Job.id).where(Job.status == JobStatus.QUEUED, Job.deadline_at < now)
                    .order_by(Job.deadline_at).limit(limit).with_for_update(skip_locked=True))
            outbox = OutboxWriter(s)
            for job_id in list(s.scalars(stmt)):
                row = _cas(s, job_id, JobStatus.QUEUED, None, status=JobStatus.EXPIRED, finished_at=now,
                           error_code=JobErrorCode.EXPIRED, error_message="not started before its deadline")
                if row is not None:
                    expired.append(job_id)
                    outbox.job_event(row, EventType.JOB_FAILED, now)
                    finish_batch_if_done(s, outbox, row.batch_id, now)
        if expired:
            log.info("expired %d overdue jobs", len(expired))
        return expired

    def mark_enqueued(self, job_ids: Iterable[str]) -> None:
        """Record that a message for these jobs was just sent."""
        ids = list(job_ids)
        if not ids:
            return
        with write_session(self.sessions) as s:
            s.execute(update(Job).where(Job.id.in_(ids)).values(last_enqueued_at=utcnow()),
                      execution_options={"synchronize_session": False})


def _charge(s: Session, rows: list[Job], claims: list[Claim], now: datetime,
            weight_of: dict[str, float] | None = None) -> None:
    """Advance the fair-share virtual time of every key served by this claim (see storage.scheduling.policy)."""
    started = {c.job_id for c in claims}
    served: dict[str, dict[str, tuple[int, float]]] = {}
    for row in rows:
        if row.id in started:
            jobs, work = served.setdefault(row.queue, {}).get(row.owner_id, (0, 0.0))
            served[row.queue][row.owner_id] = (jobs + 1, work + scheduling.job_work(row))
    for queue in sorted(served):
        fair_share.charge(s, queue, served[queue], now, weight_of)


def _cas(s: Session, job_id: str, expected: JobStatus, token: str | None, **values: Any) -> Job | None:
    """Compare-and-set one job row; the updated row, or None if it was not in the expected state/lease."""
    stmt = update(Job).where(Job.id == job_id, Job.status == expected)
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    stmt = stmt.values(**values).returning(Job)
    row = s.scalars(stmt, execution_options={"populate_existing": True,
                                             "synchronize_session": False}).first()
    if row is not None:
        job_events.note(s, row, values)  # published after commit (storage.jobs.events)
    return row


def _cas_batch(s: Session, batch_id: str, expected: JobStatus, **values: Any) -> list[Job]:
    """Compare-and-set every job of a batch that is in the `expected` state; the updated rows."""
    stmt = (update(Job).where(Job.batch_id == batch_id, Job.status == expected).values(**values).returning(Job))
    rows = list(s.scalars(stmt, execution_options={"populate_existing": True, "synchronize_session": False}))
    for row in rows:
        job_events.note(s, row, values)
    return rows


def _canceled_on_leaving(s: Session, outbox: OutboxWriter, job_id: str, token: str, now: datetime) -> Job | None:
    """running -> canceled for a job that leaves its worker (released, or its lease lost) with a cancel request
    the worker never acknowledged: its owner asked to stop it, so it must not run again (a claim clears the
    request). The caller holds the row's lock."""
    row = _cas(s, job_id, JobStatus.RUNNING, token, lease_token=None, lease_expires_at=None,
               **_canceled_values(now, "canceled by request"))
    if row is not None:
        outbox.job_event(row, EventType.JOB_CANCELED, now)
        finish_batch_if_done(s, outbox, row.batch_id, now)
        log.info("job %s canceled: it left its worker with a cancel request", job_id)
    return row


def _canceled_values(now: datetime, message: str) -> dict[str, Any]:
    return {"status": JobStatus.CANCELED, "finished_at": now, "error_code": JobErrorCode.CANCELED,
            "error_message": message}


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {"status": JobStatus.QUEUED, "queued_at": now, "lease_token": None, "lease_expires_at": None,
            "worker_id": None, "started_at": None, "progress_step": None, "progress_total": None,
            "batch_size": None, "last_enqueued_at": None}


_ATTR_TO_COLUMN = {"metadata_": "metadata"}
_JOBS_TABLE: Table = Job.__table__  # type: ignore[assignment]


def _column_values(values: dict[str, Any]) -> dict[str, Any]:
    return {_ATTR_TO_COLUMN.get(k, k): v for k, v in values.items()}


def _record_from_values(values: dict[str, Any]) -> JobRecord:
    full: dict[str, Any] = {c.key: None for c in Job.__mapper__.column_attrs}
    full.update(values)
    full["metadata"] = full.pop("metadata_")
    return JobRecord(**full)
