"""JobStore: the job state machine, and the only code that changes a job's `status`.

```
              create
                │
                ▼          claim_batch (CAS, SKIP LOCKED)
            ┌────────┐ ─────────────────────────────────► ┌─────────┐ ── complete ──► succeeded
            │ queued │                                    │ running │ ── fail ──────► failed
            └────────┘ ◄── requeue_expired (attempts+1) ─ └─────────┘ ── cancel_running ► canceled
             │     │   ◄── release (graceful, same attempts)   │
             │     │                                           └─ requeue_expired at max_attempts
             │     └── expire_overdue (past deadline_at) ──► expired     ──► failed (worker_lost)
             └── request_cancel ──► canceled        (request_cancel on running sets cancel_requested)
```
Terminal states (succeeded, failed, canceled, expired) are final. Every move is a compare-and-set
`UPDATE ... WHERE id=:id AND status=:expected [AND lease_token=:token] RETURNING *`; a running job's writes are
fenced by the `lease_token` its claim got, so a worker whose lease expired can never overwrite a newer state.
Webhook outbox rows (job.started/succeeded/failed/canceled, batch.completed) are written in the same
transaction; when a batch's last job turns terminal, the batch is finished in that transaction too.
Postgres claims with `FOR UPDATE SKIP LOCKED`; SQLite serializes writers with `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.batch_completion import finish_batch_if_done
from storage.db import write_session
from storage.errors import Conflict, IdempotencyConflict, IllegalTransition, NotFound
from storage.ids import new_id
from storage.job_queries import ACTIVE_STATUSES, JobQueries
from storage.outbox import OutboxWriter
from storage.records import BatchRecord, Claim, JobRecord, NewBatch, NewJob
from storage.tables import TERMINAL_STATUSES, Batch, Job, utcnow

log = logging.getLogger(__name__)

__all__ = ["ACTIVE_STATUSES", "Claim", "JobRecord", "JobStore", "NewBatch", "NewJob", "pixels_of"]


def pixels_of(kind: str, params: dict[str, Any]) -> int:
    """What a job weighs in a batch's pixel budget: width*height*num_images (understand: size*size)."""
    if kind == "understand":
        size = int(params.get("size", 0))
        return size * size
    return int(params.get("width", 0)) * int(params.get("height", 0)) * int(params.get("num_images", 1))


class JobStore(JobQueries):
    """Creates, reads and moves jobs. Thread-safe: every call runs in its own session and transaction."""

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
        self, news: Sequence[NewJob], batch: NewBatch | None = None
    ) -> tuple[BatchRecord | None, builtins.list[JobRecord]]:
        """Insert a batch row (optional) and all its jobs in one transaction (all or nothing)."""
        now = utcnow()
        batch_record = None
        with write_session(self.sessions) as s:
            batch_id = None
            if batch is not None:
                batch_row = Batch(
                    id=batch.id or new_id(), owner_id=batch.owner_id, status="in_progress", total=len(news),
                    webhook_url=batch.webhook_url, webhook_events=batch.webhook_events,
                    metadata_=batch.metadata, created_at=now,
                )
                s.add(batch_row)
                s.flush()
                batch_id = batch_row.id
                batch_record = BatchRecord.of(batch_row, {"queued": len(news)})
            values = [self._values(n, now, batch_id) for n in news]
            if values:
                s.execute(insert(_JOBS_TABLE), [_column_values(v) for v in values])
        records = [_record_from_values(v) for v in values]
        log.info("created %d jobs batch=%s", len(records), batch_id)
        return batch_record, records

    @staticmethod
    def _values(new: NewJob, now: datetime, batch_id: str | None) -> dict[str, Any]:
        return {
            "id": new.id or new_id(), "owner_id": new.owner_id, "batch_id": batch_id, "custom_id": new.custom_id,
            "kind": new.kind, "status": "queued", "priority": new.priority, "params": new.params,
            "compat_key": new.compat_key, "queue": new.queue, "attempts": 0, "max_attempts": new.max_attempts,
            "cancel_requested": False, "created_at": now, "queued_at": now, "deadline_at": new.deadline_at,
            "seed": new.seed, "webhook_url": new.webhook_url, "webhook_events": new.webhook_events,
            "metadata_": new.metadata, "idempotency_key": new.idempotency_key, "request_hash": new.request_hash,
            "input_key": new.input_key, "pixels": new.pixels or pixels_of(new.kind, new.params),
        }

    # ---- claiming and leases --------------------------------------------------------------------------------
    def claim_batch(
        self, job_id: str, worker_id: str, lease_seconds: float, max_items: int, max_pixels: int,
        kinds: Sequence[str] | None = None,
    ) -> builtins.list[Claim]:
        """Claim `job_id` if still queued plus compatible queued jobs (same compat_key), priority desc then
        oldest first, up to `max_items` and `max_pixels` summed. Empty list: nothing to do for this message."""
        now = utcnow()
        with write_session(self.sessions) as s:
            # The message's own job waits for its row lock instead of skipping it: a short lock held by someone
            # else (the API stamping last_enqueued_at, a cancel) must not turn this message into a no-op, which
            # would leave the job for the sweeper. Waiting cannot deadlock: nothing else is locked yet, and the
            # batch-mates below are taken with SKIP LOCKED. Postgres re-checks `status` once the lock is ours.
            seed = s.scalars(
                select(Job).where(Job.id == job_id, Job.status == "queued").with_for_update()
            ).first()
            if seed is None or (kinds is not None and seed.kind not in kinds):
                return []
            chosen = [seed]
            budget = max_pixels - seed.pixels
            if max_items > 1:
                for row in self._compatible(s, seed, now, max_items - 1):
                    if len(chosen) >= max_items:
                        break
                    if row.pixels <= budget:
                        chosen.append(row)
                        budget -= row.pixels
            claims = self._start(s, chosen, worker_id, lease_seconds, now)
        log.info("worker %s claimed %d jobs %s", worker_id, len(claims), [c.job_id for c in claims])
        return claims

    @staticmethod
    def _compatible(s: Session, seed: Job, now: datetime, limit: int) -> builtins.list[Job]:
        stmt = (
            select(Job)
            .where(Job.status == "queued", Job.compat_key == seed.compat_key, Job.id != seed.id)
            .where(or_(Job.deadline_at.is_(None), Job.deadline_at > now))
            .order_by(Job.priority.desc(), Job.created_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return builtins.list(s.scalars(stmt))

    @staticmethod
    def _start(s: Session, rows: builtins.list[Job], worker_id: str, lease_seconds: float,
               now: datetime) -> builtins.list[Claim]:
        outbox = OutboxWriter(s)
        claims = []
        for row in rows:
            token = new_id()
            started = _cas(s, row.id, "queued", None, status="running", started_at=now, worker_id=worker_id,
                           lease_token=token, lease_expires_at=now + timedelta(seconds=lease_seconds),
                           batch_size=len(rows), progress_step=0, cancel_requested=False,
                           queue_seconds=(now - (row.queued_at or row.created_at)).total_seconds())
            if started is not None:
                claims.append(Claim(row.id, token))
                outbox.job_event(started, "job.started", now)
        return claims

    def renew(self, claims: Iterable[Claim], lease_seconds: float) -> builtins.list[Claim]:
        """Extend the leases still held; the ones missing from the result were lost (stop working on them)."""
        now = utcnow()
        held = []
        with write_session(self.sessions) as s:
            for claim in claims:
                if _cas(s, claim.job_id, "running", claim.lease_token,
                        lease_expires_at=now + timedelta(seconds=lease_seconds)) is not None:
                    held.append(claim)
        return held

    def set_progress(self, claim: Claim, step: int, total: int) -> bool:
        """Record sampling progress (best effort; the caller throttles). False if the claim is stale."""
        with write_session(self.sessions) as s:
            return _cas(s, claim.job_id, "running", claim.lease_token,
                        progress_step=step, progress_total=total) is not None

    # ---- finishing ------------------------------------------------------------------------------------------
    def complete(
        self, claim: Claim, result_keys: Sequence[str], result_text: str | None = None,
        timings: dict[str, float] | None = None, model_id: str | None = None, model_revision: str | None = None,
    ) -> bool:
        """running -> succeeded (objects must already be written). False if the claim is stale."""
        timings = timings or {}
        return self._finish(
            claim, "succeeded", "job.succeeded", result_keys=builtins.list(result_keys), result_text=result_text,
            model_seconds=timings.get("model_seconds"), upload_seconds=timings.get("upload_seconds"),
            model_id=model_id, model_revision=model_revision,
        )

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        """running -> failed with a stable error code. False if the claim is stale."""
        return self._finish(claim, "failed", "job.failed", error_code=code, error_message=message[:4000])

    def cancel_running(self, claim: Claim) -> bool:
        """The worker acknowledges a cancel request: running -> canceled. False if the claim is stale."""
        return self._finish(claim, "canceled", "job.canceled", error_code="canceled",
                            error_message="canceled by request")

    def _finish(self, claim: Claim, status: str, event: str, **values: Any) -> bool:
        now = utcnow()
        with write_session(self.sessions) as s:
            row = _cas(s, claim.job_id, "running", claim.lease_token, status=status, finished_at=now,
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
        """Graceful shutdown: running -> queued with attempts unchanged. Returns how many were released."""
        now = utcnow()
        n = 0
        with write_session(self.sessions) as s:
            for claim in claims:
                if _cas(s, claim.job_id, "running", claim.lease_token, **_requeue_values(now)) is not None:
                    n += 1
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
        if row.status == "running":
            updated = _cas(s, job_id, "running", row.lease_token, cancel_requested=True)
            if updated is not None:
                log.info("job %s cancel requested while running on %s", job_id, updated.worker_id)
                return JobRecord.of(updated)
            return None
        updated = _cas(s, job_id, "queued", None, status="canceled", finished_at=now,
                       error_code="canceled", error_message="canceled by request")
        if updated is None:
            return None
        outbox = OutboxWriter(s)
        outbox.job_event(updated, "job.canceled", now)
        finish_batch_if_done(s, outbox, updated.batch_id, now)
        log.info("job %s canceled while queued", job_id)
        return JobRecord.of(updated)

    # ---- sweeping -------------------------------------------------------------------------------------------
    def requeue_expired(self, now: datetime | None = None, limit: int = 500) -> builtins.list[str]:
        """Running jobs whose lease expired (oldest first, up to `limit` per call): back to queued with
        attempts+1, or failed `worker_lost` once attempts reach max_attempts. Returns the ids put back in
        the queue (re-enqueue them)."""
        now = now or utcnow()
        requeued = []
        with write_session(self.sessions) as s:
            stmt = (select(Job).where(Job.status == "running", Job.lease_expires_at < now)
                    .order_by(Job.lease_expires_at).limit(limit).with_for_update(skip_locked=True))
            outbox = OutboxWriter(s)
            for row in builtins.list(s.scalars(stmt)):
                attempts, lost_worker = row.attempts + 1, row.worker_id
                if attempts >= row.max_attempts:
                    failed = _cas(s, row.id, "running", row.lease_token, status="failed", finished_at=now,
                                  attempts=attempts, lease_token=None, lease_expires_at=None,
                                  error_code="worker_lost",
                                  error_message=f"worker lost {attempts} times (last: {lost_worker})")
                    if failed is not None:
                        outbox.job_event(failed, "job.failed", now)
                        finish_batch_if_done(s, outbox, failed.batch_id, now)
                        log.warning("job %s failed: worker_lost after %d attempts", row.id, attempts)
                elif _cas(s, row.id, "running", row.lease_token, attempts=attempts,
                          **_requeue_values(now)) is not None:
                    requeued.append(row.id)
                    log.warning("job %s lease expired on %s, requeued (attempt %d)", row.id, lost_worker, attempts)
        return requeued

    def expire_overdue(self, now: datetime | None = None, limit: int = 1000) -> builtins.list[str]:
        """Queued jobs past their deadline -> expired (webhook event `job.failed` with status expired)."""
        now = now or utcnow()
        expired = []
        with write_session(self.sessions) as s:
            stmt = (select(Job.id).where(Job.status == "queued", Job.deadline_at < now)
                    .order_by(Job.deadline_at).limit(limit).with_for_update(skip_locked=True))
            outbox = OutboxWriter(s)
            for job_id in builtins.list(s.scalars(stmt)):
                row = _cas(s, job_id, "queued", None, status="expired", finished_at=now, error_code="expired",
                           error_message="not started before its deadline")
                if row is not None:
                    expired.append(job_id)
                    outbox.job_event(row, "job.failed", now)
                    finish_batch_if_done(s, outbox, row.batch_id, now)
        if expired:
            log.info("expired %d overdue jobs", len(expired))
        return expired

    def mark_enqueued(self, job_ids: Iterable[str]) -> None:
        """Record that a message for these jobs was just sent."""
        ids = builtins.list(job_ids)
        if not ids:
            return
        with write_session(self.sessions) as s:
            s.execute(update(Job).where(Job.id.in_(ids)).values(last_enqueued_at=utcnow()),
                      execution_options={"synchronize_session": False})


def _cas(s: Session, job_id: str, expected: str, token: str | None, **values: Any) -> Job | None:
    """Compare-and-set one job row; the updated row, or None if it was not in the expected state/lease."""
    stmt = update(Job).where(Job.id == job_id, Job.status == expected)
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    stmt = stmt.values(**values).returning(Job)
    return s.scalars(stmt, execution_options={"populate_existing": True,
                                              "synchronize_session": False}).first()


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {"status": "queued", "queued_at": now, "lease_token": None, "lease_expires_at": None,
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
