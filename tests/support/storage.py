"""Helpers of the storage tests: the stores of one backend together, API-key owners and new-job records.

Knows the storage layer's public classes and the `api_keys` table (to make an owner without the API);
knows nothing of fixtures or of which backend a test runs on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from storage.batches.store import BatchStore
from storage.jobs.ids import new_id
from storage.jobs.store import JobStore
from storage.records import NewJob
from storage.tables import ApiKey


@dataclass
class Stores:
    """The stores over one backend's sessions, and an owner whose jobs the test creates."""

    backend: str
    sessions: Any
    jobs: JobStore
    batches: BatchStore
    owner_id: str

    def new_owner(self, default_webhook_url: str | None = None) -> str:
        return add_owner(self.sessions, default_webhook_url)


def add_owner(sessions: Any, default_webhook_url: str | None = None) -> str:
    """A new API key row; its id owns jobs."""
    key_id = new_id()
    with sessions.begin() as s:
        s.add(ApiKey(id=key_id, name="t", key_prefix="upk_t", key_hash=secrets.token_hex(32),
                     webhook_secret="whsec_x", default_webhook_url=default_webhook_url))
    return key_id


def job(owner_id: str, compat: str = "generate:256:8:3.0:constant", *, priority: int = 0, size: int = 256,
        num_images: int = 1, queue: str = "unipic.generate.s", **kw: Any) -> NewJob:
    """A new `generate` job record (not yet created)."""
    params = {"prompt": "a cat", "width": size, "height": size, "num_images": num_images, "steps": 8}
    return NewJob(owner_id=owner_id, kind="generate", params=params, compat_key=compat,
                  queue=queue, priority=priority, seed=1, **kw)
