"""Typed errors raised by the storage layer.

Every error carries a stable machine-readable `code` (the ones in docs/architecture.md), so the API can map
them to HTTP responses without string matching. HTTP status codes live only in `api/`.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every storage error."""

    code = "store_error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class NotFound(StoreError):
    """The row or object does not exist (or belongs to another owner)."""

    code = "not_found"


class IllegalTransition(StoreError):
    """A state change that the job state machine does not allow (e.g. anything from a terminal state)."""

    code = "illegal_transition"


class Conflict(StoreError):
    """A uniqueness or concurrency conflict."""

    code = "conflict"


class IdempotencyConflict(Conflict):
    """The same idempotency key was used with a different request body."""

    code = "idempotency_conflict"


class InvalidKey(StoreError):
    """An object key that is unsafe or malformed (path traversal, absolute path, NUL, backslash)."""

    code = "invalid_key"


class ObjectTooLarge(StoreError):
    """An object larger than the configured bound."""

    code = "payload_too_large"


class ChecksumMismatch(StoreError):
    """An object whose content does not match its stored sha256."""

    code = "checksum_mismatch"


class Unavailable(StoreError):
    """A backing service (database, Redis, object store) cannot be reached."""

    code = "unavailable"


class InvalidWeight(StoreError, ValueError):
    """A fair-share weight that is not a positive number (at most `storage.keys.MAX_WEIGHT`)."""

    code = "invalid_weight"


class ForeignResultKeys(StoreError):
    """A completion that names result objects outside its own lease's prefix (`storage.objects.base.lease_prefix`)."""

    code = "foreign_result_keys"
