"""`POST /v1/batches` with an `Idempotency-Key`: the first submission creates the batch, a repeat with the same
key and the same body returns it (200), the same key with another body is 409 `idempotency_conflict`.

Owns the request hash of a batch (canonical JSON of its items and options) and the replay rule around
`Submitter.submit_batch`; the lookup (`BatchStore.by_key`) and the unique (owner, key) constraint live in storage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from api.intake.submission import Submitter
from api.services import Services
from storage.records import BatchRecord


def batch_hash(items: Sequence[Any], options: dict[str, Any]) -> str:
    canonical = json.dumps([list(items), options], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_batch_once(services: Services, owner_id: str, items: Sequence[Any], lines: Sequence[int],
                      options: dict[str, Any], max_active: int | None, key: str | None) -> tuple[BatchRecord, bool]:
    """The batch and whether this call created it (False: a replay of the same key and body)."""
    submitter = Submitter(services)
    if not key:
        return submitter.submit_batch(owner_id, items, lines, options, max_active), True
    digest = batch_hash(items, options)
    existing = services.batches.by_key(owner_id, key, digest)
    if existing is not None:
        return existing, False
    try:
        return submitter.submit_batch(owner_id, items, lines, options, max_active, (key, digest)), True
    except Exception:  # a concurrent submission of the same key won the unique (owner, key) constraint?
        existing = services.batches.by_key(owner_id, key, digest)
        if existing is None:
            raise
        return existing, False
