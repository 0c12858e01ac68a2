"""Secrets shown once and stored only as a hash: the rules API keys (`storage.keys`) and worker tokens
(`storage.fleet.tokens`) share, written once.

A credential is `<prefix><random>`, shown once when it is made; only its sha256 is stored, with its first 12
characters to recognise it in listings. Authentication hashes what is presented, looks the hash up and compares
in constant time; a revoked row never authenticates. Listings are oldest first; revoking is idempotent and keeps
the row (its jobs and its history stay). The stores own what differs: their tables' other columns and records.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import write_session
from storage.errors import NotFound
from storage.tables import ApiKey, WorkerToken, utcnow

Row = TypeVar("Row", ApiKey, WorkerToken)
T = TypeVar("T")

MAX_PLAINTEXT = 200  # longer than any credential made here: refused without a query


def new_plaintext(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def live_row(sessions: sessionmaker[Session], model: type[Row], hash_field: str, prefix: str,
             plaintext: str) -> Row | None:
    """The unrevoked row whose hash (column `hash_field`) is this plaintext's, or None."""
    if not plaintext or not plaintext.startswith(prefix) or len(plaintext) > MAX_PLAINTEXT:
        return None
    digest = hash_secret(plaintext)
    with sessions() as s:
        row = s.scalars(select(model).where(getattr(model, hash_field) == digest)).first()
    if row is None or not hmac.compare_digest(getattr(row, hash_field), digest) or row.revoked_at is not None:
        return None
    return row


def found(s: Session, model: type[Row], row_id: str, noun: str) -> Row:
    """The row, or `NotFound` naming the `noun` ("api key", "worker token")."""
    row = s.get(model, row_id)
    if row is None:
        raise NotFound(f"{noun} {row_id} not found")
    return row


def listed(sessions: sessionmaker[Session], model: type[Row], include_revoked: bool,
           record: Callable[[Row], T]) -> list[T]:
    """Every credential of this kind, oldest first (revoked ones only with `include_revoked`)."""
    stmt = select(model).order_by(model.created_at)
    if not include_revoked:
        stmt = stmt.where(model.revoked_at.is_(None))
    with sessions() as s:
        return [record(r) for r in s.scalars(stmt)]


def revoke(sessions: sessionmaker[Session], model: type[Row], row_id: str, noun: str,
           record: Callable[[Row], T]) -> T:
    """Mark the row revoked (once: revoking again keeps the first time) and return its record."""
    with write_session(sessions) as s:
        row = found(s, model, row_id, noun)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return record(row)
