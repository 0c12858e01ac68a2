"""Idempotent batch submission: finding the batch an owner already made with an Idempotency-Key.

Owns the lookup and the conflict rule (same key, other request hash: `IdempotencyConflict`). The batch row
itself is inserted with its key by `JobStore.create_many`; a unique constraint on (owner, key) settles races,
after which the loser looks the winner up here. It knows nothing of HTTP.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.batches.completion import batch_counts
from storage.errors import IdempotencyConflict
from storage.records import BatchRecord
from storage.tables import Batch


def batch_by_key(sessions: sessionmaker[Session], owner_id: str, key: str,
                 request_hash: str) -> BatchRecord | None:
    """The owner's batch made with `key`, None if there is none; `IdempotencyConflict` if it was made from
    another request."""
    with sessions() as s:
        row = s.scalars(select(Batch).where(Batch.owner_id == owner_id, Batch.idempotency_key == key)).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with a different batch")
        return BatchRecord.of(row, batch_counts(s, row.id))
