"""Batch results manifests: the one producer of their lines and of the links that fetch them.

A manifest is not a stored file. It is the batch's jobs, which hold their result object keys, read in
submission order and written as JSONL, one line per item: `{"custom_id", "job_id", "status", "result":
{"images": [{"key", "url", "expires_at"}], "text"}, "error": {"code", "message"}}`. Every image URL is presigned
when the line is produced (valid for `presign_expiry_seconds` from then), so a manifest fetched the next morning,
or days later while the results exist, never hands out a dead link. `Manifests.lines` reads the jobs a page of
`PAGE_SIZE` at a time (one query a page, nothing per item but presigning), so a 10,000-item manifest streams.

The link to a manifest (`manifest_url` in `GET /v1/batches/{id}` and in the `batch.completed` webhook) is the
API route `{public_url or api_url}/v1/batches/{id}/manifest?expires=&sig=`: an HMAC-SHA256 of the batch id and
`expires` keyed by the owner's stored key hash, so it needs no API key, stays valid until the batch's results
expire (`finished_at + result_ttl`, at least one presign lifetime from now), and dies with a revoked key. The
route also takes the owner's API key instead of a signature.

Every reader goes through here: the API's batch view and manifest route, the batch event stream's `item`
events, and the webhook renderer. Time is injected (`clock`) so tests read a manifest after its expiry without
sleeping.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select

from storage.batches.store import BatchStore
from storage.clock import utcnow
from storage.db import SessionFactory
from storage.objects.base import ObjectStore
from storage.records import BatchRecord, JobRecord
from storage.settings import Settings
from storage.states import JobStatus
from storage.tables import ApiKey, Batch

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")
PAGE_SIZE = 500
CONTENT_TYPE = "application/x-ndjson"


class Manifests:
    """Manifest lines with freshly presigned image URLs, and the signed links to the manifest route."""

    def __init__(self, sessions: SessionFactory, batches: BatchStore, objects: ObjectStore, settings: Settings,
                 *, clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.batches = batches
        self.objects = objects
        self.clock = clock
        self.base_url = (settings.public_url or settings.api_url).rstrip("/")
        self.presign_seconds = settings.presign_expiry_seconds
        self.link_lifetime = timedelta(seconds=settings.result_ttl)

    # ---- content ----
    def line(self, job: JobRecord) -> dict[str, Any]:
        """The manifest entry of one job, its image URLs presigned now."""
        line: dict[str, Any] = {"custom_id": job.custom_id, "job_id": job.id, "status": job.status,
                                "result": None, "error": None}
        if job.status == JobStatus.SUCCEEDED:
            images = []
            for key in job.result_keys or []:
                if key.lower().endswith(IMAGE_SUFFIXES):
                    url, expires_at = self.objects.presign_get(key, self.presign_seconds)
                    images.append({"key": key, "url": url, "expires_at": expires_at.isoformat()})
            line["result"] = {"images": images, "text": job.result_text}
        elif job.error_code:
            line["error"] = {"code": job.error_code, "message": job.error_message}
        return line

    def lines(self, batch_id: str) -> Iterator[bytes]:
        """The whole manifest as JSONL, one chunk per page of jobs, each line produced as it is read."""
        after: JobRecord | None = None
        while True:
            page = self.batches.jobs(batch_id, after=after, limit=PAGE_SIZE)
            if page:
                yield b"".join(encode(self.line(job)) for job in page)
            if len(page) < PAGE_SIZE:
                return
            after = page[-1]

    # ---- links ----
    def link(self, batch: BatchRecord) -> tuple[str, datetime] | None:
        """The signed URL of a finished batch's manifest and when it stops working; None while the batch runs
        (or once its owner's key is revoked)."""
        if batch.finished_at is None:
            return None
        secret = self._owner_secret(batch.id)
        if secret is None:
            return None
        now = self.clock()
        expires = int(max(batch.finished_at + self.link_lifetime,
                          now + timedelta(seconds=self.presign_seconds)).timestamp())
        query = urlencode({"expires": expires, "sig": _sign(secret, batch.id, expires)})
        return f"{self.base_url}/v1/batches/{batch.id}/manifest?{query}", datetime.fromtimestamp(expires, UTC)

    def verify(self, batch_id: str, expires: int, sig: str) -> bool:
        """Whether `sig` is the link signature of this batch until `expires`, and that is still in the future."""
        if expires < self.clock().timestamp():
            return False
        secret = self._owner_secret(batch_id)
        return secret is not None and hmac.compare_digest(_sign(secret, batch_id, expires), sig)

    def _owner_secret(self, batch_id: str) -> bytes | None:
        """The signing secret of the batch's links: its owner's stored key hash (None if revoked or missing)."""
        stmt = (select(ApiKey.key_hash).join(Batch, Batch.owner_id == ApiKey.id)
                .where(Batch.id == batch_id, ApiKey.revoked_at.is_(None)))
        with self.sessions() as s:
            key_hash = s.scalars(stmt).first()
        return key_hash.encode() if key_hash else None


def encode(line: dict[str, Any]) -> bytes:
    """One JSONL line (compact JSON and a newline)."""
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _sign(secret: bytes, batch_id: str, expires: int) -> str:
    return hmac.new(secret, f"manifest\n{batch_id}\n{int(expires)}".encode(), hashlib.sha256).hexdigest()
