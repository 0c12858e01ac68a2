"""A finished batch with its results manifest written: what `batch.completed` webhooks send.

The manifest is otherwise written lazily (on `GET /v1/batches/{id}` or by the sweeper), which could come after
the webhook was rendered, so the webhook carried `"manifest_url": null`. The dispatcher asks here first;
writing is idempotent (storage.manifests), so a race with the sweeper or the API is harmless.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.orm import Session, sessionmaker

from storage.batches import BatchStore
from storage.manifests import write_manifest
from storage.objects import ObjectStore
from storage.records import BatchRecord


def with_manifest(sessions: sessionmaker[Session], objects: ObjectStore, batch: BatchRecord,
                  expires_in: int) -> BatchRecord:
    """The batch, its manifest written first if it is finished and has none yet."""
    if batch.finished_at is None or batch.manifest_key is not None:
        return batch
    key = write_manifest(BatchStore(sessions), objects, batch.id, expires_in)
    return dataclasses.replace(batch, manifest_key=key)
