"""What a webhook sends: the body `{"type", "timestamp", "data"}` with `data` the job or batch as the API shows
it, and the Standard Webhooks headers that sign it.

The outbox row holds a snapshot taken in the transaction that changed the state (status, times, error, result
keys); this module turns it into the API's representation (`JobOut` / `BatchOut` field names in api/schemas.py)
at send time: the snapshot decides what the event says happened, the current row fills what the snapshot does
not carry (params, execution), and result URLs are presigned fresh for every attempt so a late retry never
carries an expired link. Signatures are the `standardwebhooks` package's (`webhook_headers`). It imports neither
the API nor Celery; the object store is anything that presigns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from standardwebhooks import Webhook

from storage.records import BatchRecord, JobRecord
from storage.states import JobStatus

IMAGE_EXTENSIONS = (".png", ".webp", ".jpg", ".jpeg")


class Presigner(Protocol):
    """What the renderer needs from `storage.objects.base.ObjectStore`."""

    def presign_get(self, key: str, expires_in: int | None = None) -> tuple[str, datetime]: ...


def iso(dt: datetime | None) -> str | None:
    """UTC ISO 8601 with a `Z`, as the API writes datetimes."""
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def render_body(event_type: str, payload: dict[str, Any], data: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (compact JSON)."""
    body = {"type": event_type, "timestamp": payload.get("timestamp"), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers of one send. The signature header
    holds one `v1,<base64>` signature per live secret (`whsec_<base64>`, current first), space-separated, so
    during a rotation a receiver holding either secret verifies."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    sent_at = datetime.fromtimestamp(timestamp, UTC)
    signatures = " ".join(Webhook(secret).sign(msg_id, sent_at, body) for secret in secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}


def job_data(job: JobRecord, snapshot: dict[str, Any], presigner: Presigner,
             expires_seconds: int) -> dict[str, Any]:
    """A job as `GET /v1/jobs/{id}` shows it, in the state recorded by the event's snapshot."""
    status = snapshot.get("status", job.status)
    keys = snapshot.get("result_keys", job.result_keys) or []
    text = snapshot.get("result_text", job.result_text)
    error = snapshot.get("error", _error(job))
    progress = snapshot.get("progress") or _progress(job, status)
    return {
        "id": job.id,
        "kind": job.kind,
        "status": status,
        "priority": job.priority,
        "params": job.params,
        "created_at": iso(job.created_at),
        "started_at": snapshot.get("started_at", iso(job.started_at)),
        "finished_at": snapshot.get("finished_at", iso(job.finished_at)),
        "progress": progress,
        "queue_position": None,
        "result": _result(job, keys, text, presigner, expires_seconds) if status == JobStatus.SUCCEEDED
        else None,
        "error": error,
        "execution": {
            "worker": job.worker_id,
            "batch_size": job.batch_size,
            "attempts": snapshot.get("attempts", job.attempts),
            "queue_seconds": job.queue_seconds,
            "model_seconds": job.model_seconds,
            "upload_seconds": job.upload_seconds,
            "model_id": job.model_id,
            "model_revision": job.model_revision,
        },
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "metadata": job.metadata,
        "cancel_requested": job.cancel_requested,
    }


def batch_data(batch: BatchRecord, snapshot: dict[str, Any],
               manifest: tuple[str, datetime] | None) -> dict[str, Any]:
    """A batch as `GET /v1/batches/{id}` shows it, with the counts of the event's snapshot and its manifest link
    (`storage.batches.manifests.Manifests.link`, which outlives the presign expiry)."""
    url, expires_at = manifest or (None, None)
    return {
        "id": batch.id,
        "status": snapshot.get("status", batch.status),
        "total": batch.total,
        "counts": snapshot.get("counts", batch.counts),
        "created_at": iso(batch.created_at),
        "finished_at": snapshot.get("finished_at", iso(batch.finished_at)),
        "canceled_at": snapshot.get("canceled_at", iso(batch.canceled_at)),
        "metadata": batch.metadata,
        "manifest_url": url,
        "manifest_expires_at": iso(expires_at),
    }


def _result(job: JobRecord, keys: list[str], text: str | None, presigner: Presigner,
            expires_seconds: int) -> dict[str, Any]:
    width = int(job.params.get("width", 0))
    height = int(job.params.get("height", 0))
    images = []
    for key in keys:
        if not key.lower().endswith(IMAGE_EXTENSIONS):
            continue  # e.g. the understand answer object: its text is `result.text`
        url, expires_at = presigner.presign_get(key, expires_seconds)
        images.append({"url": url, "expires_at": iso(expires_at), "width": width, "height": height})
    return {"images": images, "text": text}


def _error(job: JobRecord) -> dict[str, Any] | None:
    return {"code": job.error_code, "message": job.error_message} if job.error_code else None


def _progress(job: JobRecord, status: str) -> dict[str, int] | None:
    if status == JobStatus.SUCCEEDED:
        total = job.progress_total or job.params.get("steps") or job.params.get("max_new_tokens") or 1
        return {"step": int(total), "total": int(total)}
    if not job.progress_total:
        return None
    return {"step": job.progress_step or 0, "total": job.progress_total}
