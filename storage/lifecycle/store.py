"""Stored data has a lifecycle: upload slots expire, results and inputs are kept for a while, erase on request.

- Upload slots (`POST /v1/uploads`): `open_upload` records the slot with its expiry and reserves
  `UNIPIC_MAX_UPLOAD_BYTES` of the key's storage quota (`UNIPIC_MAX_STORAGE_BYTES_PER_KEY`) until it expires,
  refusing with `StorageQuotaExceeded` past the quota (serialized per key: a Postgres advisory lock, or SQLite's
  write lock). Bytes are only accepted for a live slot (`upload_live`). `expire_uploads` deletes the objects of
  expired slots, then their rows.
- Results and inputs: `purge_expired` deletes the input and result objects of jobs finished more than
  `UNIPIC_RESULT_TTL` seconds ago and stamps `jobs.purged_at` (a tombstone: the status is unchanged, the API
  shows `result.expired: true`).
- Stale attempts' results: `sweep_stale_results` deletes, once a job has been finished for longer than any
  stale lease's write could still land (`grace_seconds`), every object under `results/{job}/` that the job does
  not record (objects written under leases that did not complete it: released, expired, reclaimed, revoked), and
  stamps `jobs.results_swept_at`. Purge and erase delete the whole `results/{job}/` prefix, so even a write that
  landed after that sweep goes with the job's results.
- Erase on request: `erase_job` / `erase_batch` delete a finished job's (a finished batch's) objects and its
  personal fields: prompt, negative_prompt, instruction, question, metadata, custom_id, result text, error
  message, webhook URL, idempotency key and request hash. What stays: id, owner, kind, status, sizes, seed,
  timings, error code (accounting). Webhook events already written to the outbox are not rewritten.
Every deletion pass is bounded (`limit` rows), objects first and the row stamp second, so a pass cut short is
simply done again by the next one (deleting an object is idempotent). The same code serves S3 and local
directories through the `ObjectStore` protocol. It knows nothing of HTTP or of the sweeper's schedule.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import dialect
from storage.db import write_session
from storage.errors import IllegalTransition, NotFound, StoreError
from storage.objects.base import ObjectStore, results_prefix, upload_key
from storage.records import JobRecord
from storage.states import TERMINAL_STATUSES
from storage.tables import Batch, Job, Upload, utcnow

log = logging.getLogger(__name__)

PERSONAL_PARAMS = ("prompt", "negative_prompt", "instruction", "question")
TERMINAL = [s.value for s in TERMINAL_STATUSES]
LOCK_NAMESPACE = b"unipic.storage-quota:"


class StorageQuotaExceeded(StoreError):
    """The key's live upload slots already reserve its storage quota."""

    code = "storage_quota_exceeded"


class Lifecycle:
    """Expiry, purge and erase of stored objects, over the database and one object store."""

    def __init__(self, sessions: sessionmaker[Session], objects: ObjectStore) -> None:
        self.sessions = sessions
        self.objects = objects

    # ---- upload slots ---------------------------------------------------------------------------------------
    def open_upload(self, owner_id: str, upload_id: str, reserve_bytes: int, quota_bytes: int,
                    ttl_seconds: float, now: datetime | None = None) -> datetime:
        """Record a new upload slot; its expiry. `StorageQuotaExceeded` if the key's live slots leave no room."""
        now = now or utcnow()
        with write_session(self.sessions) as s:
            dialect.lock(s, _lock_id(owner_id))
            held = s.scalar(select(func.coalesce(func.sum(Upload.reserved_bytes), 0))
                            .where(Upload.owner_id == owner_id, Upload.expires_at > now)) or 0
            if held + reserve_bytes > quota_bytes:
                raise StorageQuotaExceeded(
                    f"live uploads of this key reserve {held} bytes; the limit is {quota_bytes} "
                    "(upload slots expire after UNIPIC_UPLOAD_TTL)", held=held, quota=quota_bytes)
            expires_at = now + timedelta(seconds=ttl_seconds)
            s.add(Upload(id=upload_id, owner_id=owner_id, created_at=now, expires_at=expires_at,
                         reserved_bytes=reserve_bytes))
        return expires_at

    def upload_live(self, owner_id: str, upload_id: str, now: datetime | None = None) -> bool:
        """Whether the slot exists, is the owner's and has not expired."""
        with self.sessions() as s:
            row = s.get(Upload, upload_id)
        return row is not None and row.owner_id == owner_id and _aware(row.expires_at) > (now or utcnow())

    def expire_uploads(self, now: datetime | None = None, limit: int = 200) -> int:
        """Delete the objects and rows of up to `limit` expired slots; how many were removed."""
        now = now or utcnow()
        with self.sessions() as s:
            ids = list(s.scalars(select(Upload.id).where(Upload.expires_at <= now)
                                 .order_by(Upload.expires_at).limit(limit)))
        for upload_id in ids:
            self.objects.delete(upload_key(upload_id))
        if ids:
            with write_session(self.sessions) as s:
                s.execute(delete(Upload).where(Upload.id.in_(ids)))
            log.info("expired %d upload slots", len(ids))
        return len(ids)

    # ---- results and inputs ---------------------------------------------------------------------------------
    def purge_expired(self, ttl_seconds: float, now: datetime | None = None, limit: int = 200) -> list[str]:
        """Delete the objects of up to `limit` jobs finished more than `ttl_seconds` ago; their ids."""
        cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
        with self.sessions() as s:
            rows = s.execute(
                select(Job.id, Job.input_key, Job.result_keys)
                .where(Job.purged_at.is_(None), Job.finished_at.is_not(None), Job.finished_at < cutoff)
                .order_by(Job.finished_at).limit(limit)
            ).all()
        for job_id, input_key, result_keys in rows:
            self._delete(_keys(input_key, result_keys))
            self._delete(self.objects.page(results_prefix(job_id)))  # anything a stale attempt left
        ids = [r[0] for r in rows]
        if ids:
            with write_session(self.sessions) as s:
                s.execute(update(Job).where(Job.id.in_(ids), Job.purged_at.is_(None))
                          .values(purged_at=now or utcnow(), result_text=None, result_keys=None, input_key=None))
            log.info("purged the objects of %d jobs finished before %s", len(ids), cutoff.isoformat())
        return ids

    def sweep_stale_results(self, grace_seconds: float, now: datetime | None = None, limit: int = 200) -> list[str]:
        """Delete the objects under `results/{job}/` that up to `limit` jobs finished more than `grace_seconds`
        ago (oldest first, each once) do not record; the ids of the jobs swept."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=grace_seconds)
        with self.sessions() as s:
            rows = s.execute(
                select(Job.id, Job.result_keys)
                .where(Job.results_swept_at.is_(None), Job.finished_at.is_not(None), Job.finished_at < cutoff)
                .order_by(Job.finished_at).limit(limit)
            ).all()
        deleted = 0
        for job_id, keys in rows:
            served = {str(k) for k in keys or []}
            stale = [k for k in self.objects.page(results_prefix(job_id)) if k not in served]
            self._delete(stale)
            deleted += len(stale)
        if rows:
            with write_session(self.sessions) as s:
                s.execute(update(Job).where(Job.id.in_([r[0] for r in rows])).values(results_swept_at=now))
        if deleted:
            log.info("deleted %d stale result objects of %d finished jobs", deleted, len(rows))
        return [r[0] for r in rows]

    # ---- erase on request -----------------------------------------------------------------------------------
    def erase_job(self, job_id: str, owner_id: str) -> JobRecord:
        """Erase a finished job's objects and personal fields; `NotFound` (another owner's too) or
        `IllegalTransition` when it is not finished yet."""
        with self.sessions() as s:
            row = s.get(Job, job_id)
            if row is None or row.owner_id != owner_id:
                raise NotFound(f"job {job_id} not found")
            if row.status not in TERMINAL:
                raise IllegalTransition(f"job {job_id} is {row.status}; cancel it first, then delete it")
        self._erase_jobs([job_id])
        with self.sessions() as s:
            return JobRecord.of(s.get_one(Job, job_id))

    def erase_batch(self, batch_id: str, owner_id: str) -> None:
        """Erase every job of a finished batch, its manifest and its metadata (same errors as `erase_job`)."""
        with self.sessions() as s:
            batch = s.get(Batch, batch_id)
            if batch is None or batch.owner_id != owner_id:
                raise NotFound(f"batch {batch_id} not found")
            if batch.finished_at is None:
                raise IllegalTransition(f"batch {batch_id} is not finished; cancel it first, then delete it")
            manifest = batch.manifest_key
            job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id)))
        for start in range(0, len(job_ids), 500):
            self._erase_jobs(job_ids[start:start + 500])
        if manifest:  # a manifest file written by an earlier version (manifests are read from the jobs now)
            self.objects.delete(manifest)
        with write_session(self.sessions) as s:
            s.execute(update(Batch).where(Batch.id == batch_id)
                      .values(metadata_=None, webhook_url=None, manifest_key=None))

    def _erase_jobs(self, job_ids: list[str]) -> None:
        with self.sessions() as s:
            rows = list(s.execute(select(Job.id, Job.input_key, Job.result_keys, Job.params)
                                  .where(Job.id.in_(job_ids), Job.status.in_(TERMINAL))).all())
        for job_id, input_key, result_keys, _ in rows:
            self._delete(_keys(input_key, result_keys))
            self._delete(self.objects.page(results_prefix(job_id)))  # anything a stale attempt left
        now = utcnow()
        with write_session(self.sessions) as s:
            for job_id, _, _, params in rows:
                s.execute(update(Job).where(Job.id == job_id, Job.status.in_(TERMINAL)).values(
                    params=_without_personal(params), metadata_=None, custom_id=None, result_text=None,
                    result_keys=None, input_key=None,
                    error_message=None, webhook_url=None, idempotency_key=None, request_hash=None,
                    purged_at=func.coalesce(Job.purged_at, now),
                ))
        log.info("erased %d jobs on request", len(rows))

    def _delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.objects.delete(key)


def _keys(input_key: str | None, result_keys: list[Any] | None) -> list[str]:
    keys = [str(k) for k in (result_keys or [])]
    if input_key:
        keys.append(input_key)
    return keys


def _without_personal(params: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(params or {})
    for name in PERSONAL_PARAMS:
        if name in out:
            out[name] = None
    return out


def _lock_id(owner_id: str) -> int:
    return int.from_bytes(hashlib.sha256(LOCK_NAMESPACE + owner_id.encode()).digest()[:8], "big", signed=True)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
