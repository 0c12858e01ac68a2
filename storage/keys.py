"""KeyStore: API keys and the webhook signing secrets that belong to them.

A key is shown once, as `upk_<random>`; only its sha256 is stored (with a short prefix to recognise it in
listings). Authentication hashes the presented key, looks the hash up and compares in constant time. Each key
has a Standard Webhooks secret (`whsec_<base64>`); rotation keeps the previous secret valid for an overlap
window so receivers can switch without dropping deliveries (both signatures are sent meanwhile).
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from storage.credentials import found, hash_secret, listed, live_row, new_plaintext, revoke
from storage.db import write_session
from storage.errors import InvalidWeight
from storage.jobs.ids import new_id
from storage.tables import ApiKey, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "upk_"
MAX_WEIGHT = 1000.0
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as the service sees it (never the plaintext, never the hash)."""

    id: str
    name: str
    key_prefix: str
    webhook_secret: str
    previous_webhook_secret: str | None
    previous_secret_expires_at: datetime | None
    default_webhook_url: str | None
    default_webhook_events: list[str] | None
    rate_limit_per_minute: int | None
    max_active_jobs: int | None
    created_at: datetime
    revoked_at: datetime | None
    weight: float = 1.0  # fair-share weight (storage.scheduling.policy)

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyRecord:
        return cls(row.id, row.name, row.key_prefix, row.webhook_secret, row.previous_webhook_secret,
                   row.previous_secret_expires_at, row.default_webhook_url, row.default_webhook_events,
                   row.rate_limit_per_minute,
                   row.max_active_jobs, row.created_at, row.revoked_at,
                   float(row.weight) if row.weight is not None else 1.0)

    def webhook_secrets(self, now: datetime | None = None) -> list[str]:
        """Secrets to sign with now: the current one, plus the previous one during the rotation overlap."""
        now = now or utcnow()
        secrets_ = [self.webhook_secret]
        if self.previous_webhook_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            secrets_.append(self.previous_webhook_secret)
        return secrets_


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


class KeyStore:
    """Creates, authenticates, lists and revokes API keys."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def create(self, name: str, rate_limit_per_minute: int | None = None, max_active_jobs: int | None = None,
               default_webhook_url: str | None = None, weight: float = 1.0) -> tuple[ApiKeyRecord, str]:
        """A new key: its record and the plaintext, which is never stored and cannot be shown again."""
        plaintext = new_plaintext(KEY_PREFIX)
        row = ApiKey(id=new_id(), name=name, key_prefix=plaintext[:12], key_hash=hash_secret(plaintext),
                     webhook_secret=new_webhook_secret(), default_webhook_url=default_webhook_url,
                     rate_limit_per_minute=rate_limit_per_minute, max_active_jobs=max_active_jobs,
                     created_at=utcnow(), weight=_checked_weight(weight))
        with write_session(self.sessions) as s:
            s.add(row)
        log.info("api key %s created (%s)", row.id, name)
        return ApiKeyRecord.of(row), plaintext

    def authenticate(self, plaintext: str) -> ApiKeyRecord | None:
        """The live key this plaintext belongs to, or None (unknown, malformed or revoked)."""
        row = live_row(self.sessions, ApiKey, "key_hash", KEY_PREFIX, plaintext)
        return None if row is None else ApiKeyRecord.of(row)

    def get(self, key_id: str) -> ApiKeyRecord:
        with self.sessions() as s:
            return ApiKeyRecord.of(self._row(s, key_id))

    def page(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """Every key, oldest first (revoked ones only with `include_revoked`)."""
        return listed(self.sessions, ApiKey, include_revoked, ApiKeyRecord.of)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key (idempotent); its jobs stay, it can no longer authenticate."""
        record = revoke(self.sessions, ApiKey, key_id, "api key", ApiKeyRecord.of)
        log.info("api key %s revoked", key_id)
        return record

    def rotate_webhook_secret(self, key_id: str, overlap_seconds: float) -> ApiKeyRecord:
        """A new current secret; the old one stays valid (signatures sent with both) for `overlap_seconds`."""
        with write_session(self.sessions) as s:
            row = self._row(s, key_id)
            row.previous_webhook_secret = row.webhook_secret
            row.previous_secret_expires_at = utcnow() + timedelta(seconds=overlap_seconds)
            row.webhook_secret = new_webhook_secret()
            log.info("api key %s webhook secret rotated (overlap %ss)", key_id, overlap_seconds)
            return ApiKeyRecord.of(row)

    def set_weight(self, key_id: str, weight: float) -> ApiKeyRecord:
        """Set the key's fair-share weight (> 0; 1 is the default): its share of each queue's work relative to
        other keys with queued work there. Takes effect at the next claim (see storage.scheduling.policy)."""
        with write_session(self.sessions) as s:
            row = self._row(s, key_id)
            row.weight = _checked_weight(weight)
            log.info("api key %s weight set to %s", key_id, weight)
            return ApiKeyRecord.of(row)

    def set_default_webhook_url(self, key_id: str, url: str | None) -> ApiKeyRecord:
        with write_session(self.sessions) as s:
            row = self._row(s, key_id)
            row.default_webhook_url = url
            return ApiKeyRecord.of(row)

    @staticmethod
    def _row(s: Session, key_id: str) -> ApiKey:
        return found(s, ApiKey, key_id, "api key")


def _checked_weight(weight: float) -> float:
    if not (0 < weight <= MAX_WEIGHT):
        raise InvalidWeight(f"weight must be > 0 and at most {MAX_WEIGHT:g}, not {weight}")
    return float(weight)
