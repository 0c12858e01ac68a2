"""What a remote worker may write for a job, and whether what it wrote is a valid result.

The worker gateway (`api.routes.worker_gateway`) hands a remote worker presigned PUT URLs for exactly the keys
`result_keys(job)` names (the same fixed keys a direct worker writes: `results/{job_id}/{index}.{ext}` for
images, `results/{job_id}/answer.json` for understand), and before it marks the job succeeded `verify_results`
checks that every one of them exists, has the declared size and sha256, and decodes as its type (an image of the
declared format; an answer document naming this job). Knows nothing of HTTP, tokens or leases.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from storage.errors import NotFound
from storage.objects import ObjectStore, answer_key, result_key
from storage.records import JobRecord

# output_format -> (file extension, PIL format name), as the workers encode them (workers.encoding)
FORMATS: dict[str, tuple[str, str]] = {"png": ("png", "PNG"), "webp": ("webp", "WEBP"), "jpeg": ("jpg", "JPEG"),
                                       "jpg": ("jpg", "JPEG")}
PIL_FORMAT_OF_EXTENSION = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
MAX_RESULT_BYTES = 64 * 1024 * 1024


class InvalidResult(ValueError):
    """What the worker declared is not a valid result for this job (the message says which key and why)."""


@dataclass(frozen=True)
class DeclaredObject:
    """One object a worker says it wrote."""

    key: str
    size: int
    sha256: str


def result_keys(job: JobRecord) -> list[str]:
    """Every key the job's results are written under (the only keys its worker may write)."""
    if job.kind == "understand":
        return [answer_key(job.id)]
    fmt = str(job.params.get("output_format") or "png").lower()
    extension = FORMATS.get(fmt, FORMATS["png"])[0]
    return [result_key(job.id, index, extension) for index in range(int(job.params.get("num_images") or 1))]


def verify_results(objects: ObjectStore, job: JobRecord, declared: Sequence[DeclaredObject]) -> str | None:
    """Check the declared objects are exactly the job's result keys and each is intact and decodes; returns the
    answer text of an understand job (None for images). Raises `InvalidResult`."""
    expected = result_keys(job)
    if sorted(d.key for d in declared) != sorted(expected):
        raise InvalidResult(f"results must be exactly {expected}, got {[d.key for d in declared]}")
    text = None
    for item in declared:
        data = _read(objects, item)
        if item.key.endswith("/answer.json"):
            text = _answer_text(job, data)
        else:
            _check_image(item.key, data)
    return text


def _read(objects: ObjectStore, item: DeclaredObject) -> bytes:
    try:
        size = objects.size(item.key)
    except NotFound:
        raise InvalidResult(f"{item.key} was not uploaded") from None
    if size != item.size:
        raise InvalidResult(f"{item.key} has {size} bytes, not the declared {item.size}")
    if size > MAX_RESULT_BYTES:
        raise InvalidResult(f"{item.key} is larger than {MAX_RESULT_BYTES} bytes")
    data = objects.get(item.key)
    if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.sha256.lower():
        raise InvalidResult(f"{item.key} does not match its declared size and sha256")
    return data


def _check_image(key: str, data: bytes) -> None:
    want = PIL_FORMAT_OF_EXTENSION[key.rsplit(".", 1)[1]]
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
            image.verify()
    except Exception as exc:  # noqa: BLE001 - any decoder error means the object is not a valid image
        raise InvalidResult(f"{key} does not decode as an image: {type(exc).__name__}") from None
    if found != want:
        raise InvalidResult(f"{key} is {found}, not {want}")


def _answer_text(job: JobRecord, data: bytes) -> str:
    try:
        answer: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidResult("answer.json is not a JSON document") from None
    if not isinstance(answer, dict) or answer.get("job_id") != job.id or not isinstance(answer.get("text"), str):
        raise InvalidResult("answer.json must be an object with this job's job_id and a text")
    return str(answer["text"])
