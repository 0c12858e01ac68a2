"""KeyStore: plaintext shown once, only hashes stored, revocation, webhook secret rotation with overlap."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from storage.credentials import hash_secret
from storage.keys import KeyStore
from storage.tables import ApiKey, utcnow


def test_create_and_authenticate(storage_sessions: Any) -> None:
    keys = KeyStore(storage_sessions)
    record, plaintext = keys.create("ci", rate_limit_per_minute=5, max_active_jobs=7)
    assert plaintext.startswith("upk_") and len(plaintext) > 40
    assert record.webhook_secret.startswith("whsec_") and record.key_prefix == plaintext[:12]
    with storage_sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.id == record.id)).one()
    assert row.key_hash == hash_secret(plaintext) and plaintext not in (row.key_hash, row.key_prefix, row.name)
    found = keys.authenticate(plaintext)
    assert found is not None and found.id == record.id and found.max_active_jobs == 7
    for wrong in (plaintext + "x", plaintext[:-1], "", "Bearer " + plaintext, "upk_" + "a" * 500):
        assert keys.authenticate(wrong) is None


def test_revoke_and_list(storage_sessions: Any) -> None:
    keys = KeyStore(storage_sessions)
    record, plaintext = keys.create("to-revoke")
    assert record.id in {k.id for k in keys.page()}
    keys.revoke(record.id)
    keys.revoke(record.id)
    assert keys.authenticate(plaintext) is None
    assert record.id not in {k.id for k in keys.page()}
    assert record.id in {k.id for k in keys.page(include_revoked=True)}


def test_rotate_webhook_secret_with_overlap(storage_sessions: Any) -> None:
    keys = KeyStore(storage_sessions)
    record, _ = keys.create("rotating")
    rotated = keys.rotate_webhook_secret(record.id, overlap_seconds=3600)
    assert rotated.webhook_secret != record.webhook_secret
    assert rotated.webhook_secrets() == [rotated.webhook_secret, record.webhook_secret]
    assert rotated.webhook_secrets(utcnow() + timedelta(hours=2)) == [rotated.webhook_secret]
    assert keys.get(record.id).previous_webhook_secret == record.webhook_secret


def test_default_webhook_url(storage_sessions: Any) -> None:
    keys = KeyStore(storage_sessions)
    record, _ = keys.create("hooks")
    assert keys.set_default_webhook_url(record.id, "https://example.com/h").default_webhook_url
