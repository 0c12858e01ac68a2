"""WorkerTokenStore: worker tokens are shown once, hashed at rest, scoped (kinds, max pixels) and revocable."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from storage.credentials import hash_secret
from storage.fleet.tokens import InvalidWorkerToken, WorkerTokenStore
from storage.tables import WorkerToken


@pytest.fixture
def store(session_factory: Any) -> WorkerTokenStore:
    return WorkerTokenStore(session_factory)


def test_created_token_is_hashed_at_rest_and_authenticates(store: WorkerTokenStore, session_factory: Any) -> None:
    record, plaintext = store.create("alice-4090", ["generate", "edit"], 512 * 512)
    assert plaintext.startswith("wk_") and record.role == "worker"
    with session_factory() as s:
        row = s.scalars(select(WorkerToken).where(WorkerToken.id == record.id)).one()
    assert row.token_hash == hash_secret(plaintext) and plaintext not in (row.token_hash, row.token_prefix)
    found = store.authenticate(plaintext)
    assert found is not None and found.kinds == ["generate", "edit"] and found.max_pixels == 512 * 512
    assert found.allows("generate", 512 * 512) and not found.allows("understand", 64 * 64)
    assert not found.allows("generate", 1024 * 1024)


def test_revoked_unknown_or_api_keys_do_not_authenticate(store: WorkerTokenStore) -> None:
    record, plaintext = store.create("bob")
    store.revoke(record.id)
    assert store.revoke(record.id).revoked_at is not None  # idempotent
    assert store.authenticate(plaintext) is None
    assert store.authenticate("wk_" + "x" * 40) is None
    assert store.authenticate("upk_" + plaintext[3:]) is None
    assert record.id not in {r.id for r in store.page()}
    assert record.id in {r.id for r in store.page(include_revoked=True)}


@pytest.mark.parametrize(("kinds", "pixels"), [(["paint"], 1024), ([], 1024), (["generate"], 0)])
def test_invalid_tokens_are_refused(store: WorkerTokenStore, kinds: list[str], pixels: int) -> None:
    with pytest.raises(InvalidWorkerToken):
        store.create("bad", kinds, pixels)
