"""The API's routes as plain request descriptions (`Call`), shared by the sync and the async client.

Owns request shapes only: paths, query parameters, bodies (job bodies with unset options left out so the
server's defaults apply, image inputs as data URLs or upload references, JSONL batches) and the automatic
Idempotency-Key of every submission. Sending, retrying and parsing answers belong to the clients.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from httpx import USE_CLIENT_DEFAULT

ImageInput = str | bytes | Path | Mapping[str, str]
BatchItems = Iterable[Mapping[str, Any]] | str | Path


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None

    def request_args(self) -> dict[str, Any]:
        """The call as `httpx.Client.request` / `httpx.AsyncClient.request` keyword arguments."""
        return {"method": self.method, "url": self.path, "params": self.params, "json": self.json,
                "content": self.content, "headers": self.headers, "timeout": self.timeout or USE_CLIENT_DEFAULT}



def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """Leave unset (None) options out so the server's defaults apply."""
    return {k: v for k, v in body.items() if v is not None}


def content_key(body: Mapping[str, Any]) -> str:
    """An Idempotency-Key that names a request body: equal bodies, equal keys."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sdk-batch-" + hashlib.sha256(canonical).hexdigest()[:48]


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4()}"


def image_input(image: ImageInput) -> str | dict[str, str]:
    """An image for a job body: a file path or bytes become a `data:` URL; a data URL or `{"upload_id": ...}`
    passes as is."""
    if isinstance(image, Mapping):
        return dict(image)
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, bytes):
        return f"data:{_sniff(image)};base64,{base64.b64encode(image).decode()}"
    path = Path(image)
    mime = mimetypes.guess_type(path.name)[0] or _sniff(path.read_bytes()[:16])
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _sniff(head: bytes) -> str:
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def sized(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the server reads it. `size` on generate/edit (the square side) is sent as `size`, which the
    server accepts on every kind, so a refusal names `size`, the field the caller wrote."""
    return body


def create_job(body: Mapping[str, Any], idempotency_key: str | None = None) -> Call:
    if "image" in body and body["image"] is not None and not isinstance(body["image"], str | dict):
        body = {**body, "image": image_input(body["image"])}
    headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
    return Call("POST", "v1/jobs", json=sized(compact(body)), headers=headers)


def batch_lines(items: BatchItems) -> list[dict[str, Any]]:
    """Batch items from an iterable of job bodies, or from a JSONL file (one body per non-empty line)."""
    if isinstance(items, str | Path):
        lines = Path(items).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    out = []
    for item in items:
        body = dict(item)
        if body.get("image") is not None and not isinstance(body["image"], str | dict):
            body["image"] = image_input(body["image"])
        out.append(sized(compact(body)))
    return out


def create_batch(items: list[dict[str, Any]], idempotency_key: str | None = None,
                 **options: Any) -> Call:
    """Without an `idempotency_key`, one derived from the batch's content (as `unipic batch submit` derives it
    from the file): submitting the same items again returns the same batch, whether they came from a file or
    an iterable. Pass a key of your own to submit the same items anew."""
    body = compact({"requests": items, **options})
    headers = {"Idempotency-Key": idempotency_key or content_key(body)}
    return Call("POST", "v1/batches", json=body, headers=headers, timeout=600.0)


def get_job(job_id: str, wait: float | None = None) -> Call:
    return Call("GET", f"v1/jobs/{job_id}", params={"wait": wait} if wait else None,
                timeout=(wait or 0) + 30.0)


def list_jobs(**filters: Any) -> Call:
    return Call("GET", "v1/jobs", params=compact(filters))


def list_batches(**filters: Any) -> Call:
    return Call("GET", "v1/batches", params=compact(filters))


def create_upload(content_type: str | None) -> Call:
    return Call("POST", "v1/uploads", json=compact({"content_type": content_type}))


def content_type_of(data: bytes) -> str:
    return _sniff(data[:16])
