"""Object storage: the `ObjectStore` protocol, its key layout, and `make_object_store(settings)`.

Two backends implement the same contract: `S3ObjectStore` (storage.objects.s3; any S3-compatible endpoint) and
`LocalObjectStore` (storage.objects.local; a directory, the embedded default, with HMAC-signed download links
served by the API). Keys are validated the same way by both (no `..`, no absolute keys, no backslashes, no NUL,
no dot-segments), so a key that works locally works on S3 and cannot escape the store.

Layout (docs/architecture.md): `inputs/{job_id}/image.png`, `uploads/{upload_id}`,
`results/{job_id}/{lease}/{index}.{ext}`, `results/{job_id}/{lease}/answer.json` (batch manifests are not stored:
they are read from the jobs, storage.batches.manifests). Results are scoped to the lease that wrote them (`lease` is the
claim's lease token): a worker that lost its lease can only write under its own old prefix, which no completed
job records and the sweeper deletes (storage.lifecycle.store), so it can never change what a user downloads.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import IO, BinaryIO, Protocol, runtime_checkable

from storage.errors import InvalidKey, ObjectTooLarge
from storage.settings import Settings

MAX_KEY_LENGTH = 1024
RESULT_EXTENSIONS = ("png", "webp", "jpg")
_CHUNK = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object."""

    key: str
    size: int
    content_type: str
    sha256: str | None


@runtime_checkable
class ObjectStore(Protocol):
    """The contract both backends meet. Writes are atomic: a key names a complete object or nothing."""

    def put(self, key: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
            max_bytes: int | None = None) -> ObjectInfo: ...
    def get(self, key: str, verify: bool = False) -> bytes: ...
    def stat(self, key: str) -> ObjectInfo: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def page(self, prefix: str = "") -> list[str]: ...  # every key under `prefix`, sorted
    def presign_get(self, key: str, expires_in: int | None = None) -> tuple[str, datetime]: ...
    def presign_put(self, key: str, expires_in: int | None = None,
                    content_type: str | None = None) -> tuple[str, datetime]: ...
    def ping(self) -> None: ...


# ---- keys ---------------------------------------------------------------------------------------------------
def validate_key(key: str) -> str:
    """The key itself if safe; `InvalidKey` for traversal, absolute paths, backslashes, NUL or control chars."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey("object key must be 1 to 1024 characters", key=str(key)[:100])
    if key.startswith("/") or "\\" in key or _CONTROL.search(key) or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey("object key must be relative, without backslashes or control characters", key=key[:100])
    for part in key.split("/"):
        if part == "" or part.startswith("."):
            raise InvalidKey("object key segments must be non-empty and not start with '.'", key=key[:100])
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key (optionally ending in '/')."""
    if prefix:
        validate_key(prefix.rstrip("/") or "x")
    return prefix


def input_key(job_id: str) -> str:
    return validate_key(f"inputs/{job_id}/image.png")


def results_prefix(job_id: str) -> str:
    """Every attempt's results of a job live under this prefix."""
    return validate_prefix(f"results/{job_id}/")


def lease_prefix(job_id: str, lease: str) -> str:
    """The results one lease (one claim of the job) may write."""
    return validate_prefix(f"results/{job_id}/{lease}/")


def result_key(job_id: str, lease: str, index: int, ext: str) -> str:
    if ext not in RESULT_EXTENSIONS:
        raise InvalidKey(f"result extension must be one of {RESULT_EXTENSIONS}", ext=ext)
    return validate_key(f"{lease_prefix(job_id, lease)}{int(index)}.{ext}")


def answer_key(job_id: str, lease: str) -> str:
    return validate_key(f"{lease_prefix(job_id, lease)}answer.json")


def lease_of_result_key(key: str) -> tuple[str, str] | None:
    """`(job_id, lease)` of a lease-scoped result key; None for any other key."""
    try:
        parts = validate_key(key).split("/")
    except InvalidKey:
        return None
    if len(parts) != 4 or parts[0] != "results":
        return None
    return parts[1], parts[2]


def upload_key(upload_id: str) -> str:
    return validate_key(f"uploads/{upload_id}")


# ---- shared helpers -----------------------------------------------------------------------------------------
def spool(data: bytes | BinaryIO, max_bytes: int | None) -> tuple[IO[bytes], int, str]:
    """Copy `data` to a seekable temp file, counting and hashing it; `ObjectTooLarge` past `max_bytes`."""
    digest = hashlib.sha256()
    out = tempfile.SpooledTemporaryFile(max_size=8 * _CHUNK)  # noqa: SIM115 - caller closes it
    size = 0
    stream = data if not isinstance(data, bytes | bytearray | memoryview) else None
    chunks = iter(lambda: stream.read(_CHUNK), b"") if stream is not None else iter([bytes(data)])  # type: ignore[arg-type]
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            out.close()
            raise ObjectTooLarge(f"object larger than {max_bytes} bytes", max_bytes=max_bytes)
        digest.update(chunk)
        out.write(chunk)
    out.seek(0)
    return out, size, digest.hexdigest()


def make_object_store(settings: Settings) -> ObjectStore:
    """The backend `settings.storage_url` names: `s3://bucket/prefix` or `file:///dir`."""
    url = settings.storage_url
    if url.startswith("s3://"):
        from storage.objects.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    from storage.objects.local import LocalObjectStore

    return LocalObjectStore.from_settings(settings)
