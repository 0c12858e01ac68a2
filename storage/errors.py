"""Typed errors raised by the storage layer.

Every error carries a stable machine-readable `code` (the ones in docs/architecture.md), so the API can map
them to HTTP responses without string matching. HTTP status codes live only in `api/`.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every storage error."""

    code = "store_error"

    def __init_subclass__(cls, code: str = "", **kwargs: object) -> None:
        """`class NotFound(StoreError, code="not_found")`: the code is named on the class line."""
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class NotFound(StoreError, code="not_found"):
    """The row or object does not exist (or belongs to another owner)."""


class IllegalTransition(StoreError, code="illegal_transition"):
    """A state change that the job state machine does not allow (e.g. anything from a terminal state)."""


class Conflict(StoreError, code="conflict"):
    """A uniqueness or concurrency conflict."""


class IdempotencyConflict(Conflict, code="idempotency_conflict"):
    """The same idempotency key was used with a different request body."""


class InvalidKey(StoreError, code="invalid_key"):
    """An object key that is unsafe or malformed (path traversal, absolute path, NUL, backslash)."""


class ObjectTooLarge(StoreError, code="payload_too_large"):
    """An object larger than the configured bound."""


class ChecksumMismatch(StoreError, code="checksum_mismatch"):
    """An object whose content does not match its stored sha256."""


class Unavailable(StoreError, code="unavailable"):
    """A backing service (database, Redis, object store) cannot be reached."""


class InvalidWeight(StoreError, ValueError, code="invalid_weight"):
    """A fair-share weight that is not a positive number (at most `storage.keys.MAX_WEIGHT`)."""


class ForeignResultKeys(StoreError, code="foreign_result_keys"):
    """A completion that names result objects outside its own lease's prefix (`storage.objects.base.lease_prefix`)."""
