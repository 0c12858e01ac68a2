"""The local-directory object store: the embedded default.

Objects are files under a root directory, written atomically (temp file in the same directory, fsync,
rename); content type and sha256 live in a sidecar under `.meta/` (keys never have dot-segments, so the
sidecars can't be addressed or listed as objects). "Presigned" URLs are API paths
`{base}/v1/objects/{key}?expires=&sig=` (plus `method=PUT` for uploads) signed with an HMAC secret kept in the
data directory, so every process sharing that directory (API, workers) signs and verifies alike.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import quote, urlencode

from storage.errors import ChecksumMismatch, InvalidKey, NotFound
from storage.objects.base import ObjectInfo, spool, validate_key, validate_prefix
from storage.settings import Settings

META_DIR = ".meta"


def load_signing_secret(data_dir: Path) -> bytes:
    """The HMAC secret for local links: created once (mode 0600) in the data directory, then reused."""
    path = data_dir / ".object_signing_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".object_signing_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # first writer wins; others read its secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


class LocalObjectStore:
    """Objects as files under `root`."""

    def __init__(self, root: Path, secret: bytes, base_url: str = "", default_expiry: int = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self.default_expiry = default_expiry
        self.clock = clock  # unix seconds; injected by tests that read a link after its expiry

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalObjectStore:
        root = Path(settings.storage_url.removeprefix("file://"))
        secret = load_signing_secret(settings.data_dir.expanduser().resolve())
        base = settings.public_url or settings.api_url
        return cls(root, secret, base, settings.presign_expiry_seconds)

    # ---- paths ----
    def path(self, key: str) -> Path:
        """The file holding `key` (validated; never outside the root)."""
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey("object key escapes the store", key=key[:100])
        return path

    def _meta_path(self, key: str) -> Path:
        return self.root / META_DIR / (validate_key(key) + ".json")

    # ---- the contract ----
    def put(self, key: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
            max_bytes: int | None = None) -> ObjectInfo:
        path = self.path(key)
        spooled, size, sha = spool(data, max_bytes)
        with spooled:
            _atomic_write(path, lambda fh: _copy(spooled, fh))
        info = ObjectInfo(key, size, content_type, sha)
        meta = json.dumps({"content_type": content_type, "sha256": sha, "size": size}).encode()
        _atomic_write(self._meta_path(key), lambda fh: fh.write(meta))
        return info

    def get(self, key: str, verify: bool = False) -> bytes:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"object {key} not found") from None
        if verify:
            expected = self.stat(key).sha256
            if expected and hashlib.sha256(data).hexdigest() != expected:
                raise ChecksumMismatch(f"object {key} does not match its sha256", key=key)
        return data

    def stat(self, key: str) -> ObjectInfo:
        path = self.path(key)
        if not path.is_file():
            raise NotFound(f"object {key} not found")
        try:
            meta = json.loads(self._meta_path(key).read_text())
        except (FileNotFoundError, ValueError):
            meta = {}
        return ObjectInfo(key, path.stat().st_size, meta.get("content_type", "application/octet-stream"),
                          meta.get("sha256"))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.stat(key).size

    def delete(self, key: str) -> None:
        for path in (self.path(key), self._meta_path(key)):
            path.unlink(missing_ok=True)

    def page(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def presign_get(self, key: str, expires_in: int | None = None) -> tuple[str, datetime]:
        return self._signed_url(key, "GET", expires_in)

    def presign_put(self, key: str, expires_in: int | None = None,
                    content_type: str | None = None) -> tuple[str, datetime]:
        return self._signed_url(key, "PUT", expires_in)

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise OSError(f"object directory {self.root} is not writable")

    # ---- signed links ----
    def sign(self, key: str, expires: int, method: str = "GET") -> str:
        message = f"{method}\n{validate_key(key)}\n{int(expires)}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def verify_signature(self, key: str, expires: int | str, sig: str, method: str = "GET") -> bool:
        """True if `sig` was made by this store for (method, key, expires) and `expires` is in the future."""
        try:
            expires_at = int(expires)
            expected = self.sign(key, expires_at, method)
        except (ValueError, InvalidKey):
            return False
        return expires_at >= self.clock() and hmac.compare_digest(expected, str(sig))

    def _signed_url(self, key: str, method: str, expires_in: int | None) -> tuple[str, datetime]:
        expires = int(self.clock()) + int(expires_in or self.default_expiry)
        query = {"expires": expires, "sig": self.sign(key, expires, method)}
        if method != "GET":
            query["method"] = method
        url = f"{self.base_url}/v1/objects/{quote(key)}?{urlencode(query)}"
        return url, datetime.fromtimestamp(expires, UTC)


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    while chunk := src.read(1024 * 1024):
        dst.write(chunk)


def _atomic_write(path: Path, write: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)  # type: ignore[operator]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
