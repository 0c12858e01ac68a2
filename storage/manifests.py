"""Batch results manifests: one JSONL object per batch, one line per item, written once the batch is done.

Each line is `{"custom_id", "job_id", "status", "result": {"images": [{"key", "url", "expires_at"}], "text"},
"error": {"code", "message"}}` in submission order. The manifest is written at `manifests/{batch_id}.jsonl`
and recorded with `BatchStore.set_manifest_key`; writing it again gives the same content (idempotent), so the
API writing it lazily on `GET /v1/batches/{id}` and a sweeper writing it in the background cannot conflict.
Image URLs inside are presigned at writing time (their `expires_at` says until when); the keys are there too.

Used by the API (lazily, on GET) and by the sweeper (in the background), so it lives in storage.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from storage.batches import BatchStore
from storage.objects import ObjectStore, manifest_key
from storage.records import JobRecord
from storage.states import JobStatus

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")


def manifest_line(job: JobRecord, objects: ObjectStore, expires_in: int) -> dict[str, Any]:
    """The manifest entry of one job."""
    line: dict[str, Any] = {"custom_id": job.custom_id, "job_id": job.id, "status": job.status,
                            "result": None, "error": None}
    if job.status == JobStatus.SUCCEEDED:
        images = []
        for key in job.result_keys or []:
            if key.lower().endswith(IMAGE_SUFFIXES):
                url, expires_at = objects.presign_get(key, expires_in)
                images.append({"key": key, "url": url, "expires_at": expires_at.isoformat()})
        line["result"] = {"images": images, "text": job.result_text}
    elif job.error_code:
        line["error"] = {"code": job.error_code, "message": job.error_message}
    return line


def write_manifest(batches: BatchStore, objects: ObjectStore, batch_id: str, expires_in: int) -> str:
    """Write the JSONL manifest of a finished batch and record its key; returns the key."""
    jobs = batches.jobs(batch_id)
    body = "".join(json.dumps(manifest_line(j, objects, expires_in), separators=(",", ":")) + "\n" for j in jobs)
    key = manifest_key(batch_id)
    objects.put(key, body.encode(), content_type="application/x-ndjson")
    batches.set_manifest_key(batch_id, key)
    log.info("batch %s manifest written: %d lines at %s", batch_id, len(jobs), key)
    return key
