"""WorkerTokenStore: the tokens that let a worker pull work over the HTTPS gateway (`/v1/worker/...`).

A worker token is not an API key: its role is "worker" and it can only claim, run and finish jobs of the kinds
and sizes it allows, never submit or read jobs. It is shown once, as `wk_<random>`; only its sha256 is stored
(with a short prefix to recognise it in listings), exactly as `storage.keys` does for API keys. Revoking it
takes effect within the gateway's revocation bound (`storage.fleet.token_cache`: each API process re-checks the
tokens it has seen with one `live_ids` query per half bound); the jobs its workers held come back through lease
expiry. Knows nothing of HTTP or of the gateway's routes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.credentials import found, hash_secret, listed, live_row, new_plaintext, revoke
from storage.db import write_session
from storage.errors import StoreError
from storage.jobs.ids import new_id
from storage.tables import WorkerToken, utcnow

log = logging.getLogger(__name__)

TOKEN_PREFIX = "wk_"
KINDS = ("generate", "edit", "understand")
ROLE = "worker"


class InvalidWorkerToken(StoreError, ValueError):
    """A token cannot be created with these settings (unknown kind, no kind, pixels out of range)."""


@dataclass(frozen=True)
class WorkerTokenRecord:
    """A worker token as the service sees it (never the plaintext, never the hash)."""

    id: str
    name: str
    token_prefix: str
    kinds: list[str]
    max_pixels: int
    created_at: datetime
    revoked_at: datetime | None
    role: str = ROLE

    @classmethod
    def of(cls, row: WorkerToken) -> WorkerTokenRecord:
        return cls(row.id, row.name, row.token_prefix, list(row.kinds), int(row.max_pixels), row.created_at,
                   row.revoked_at)

    def allows(self, kind: str, pixels_per_image: int) -> bool:
        """Whether a worker holding this token may run a job of `kind` with images of this many pixels."""
        return kind in self.kinds and pixels_per_image <= self.max_pixels


class WorkerTokenStore:
    """Creates, authenticates, lists and revokes worker tokens."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.sessions = session_factory

    def create(self, name: str, kinds: Sequence[str] = KINDS, max_pixels: int = 1024 * 1024
               ) -> tuple[WorkerTokenRecord, str]:
        """A new token: its record and the plaintext, which is never stored and cannot be shown again."""
        kinds = _checked_kinds(kinds)
        if not (0 < max_pixels <= 4096 * 4096):
            raise InvalidWorkerToken(f"max pixels must be between 1 and {4096 * 4096}, not {max_pixels}")
        plaintext = new_plaintext(TOKEN_PREFIX)
        row = WorkerToken(id=new_id(), name=name[:200], token_prefix=plaintext[:12], token_hash=hash_secret(plaintext),
                          kinds=kinds, max_pixels=int(max_pixels), created_at=utcnow())
        with write_session(self.sessions) as s:
            s.add(row)
        log.info("worker token %s created (%s, kinds=%s, max_pixels=%d)", row.id, name, kinds, max_pixels)
        return WorkerTokenRecord.of(row), plaintext

    def authenticate(self, plaintext: str) -> WorkerTokenRecord | None:
        """The live token this plaintext is, or None (unknown, malformed or revoked)."""
        row = live_row(self.sessions, WorkerToken, "token_hash", TOKEN_PREFIX, plaintext)
        return None if row is None else WorkerTokenRecord.of(row)

    def live_ids(self, token_ids: Collection[str]) -> set[str]:
        """Which of these tokens are still live (exist, unrevoked): one query, whatever their number."""
        if not token_ids:
            return set()
        with self.sessions() as s:
            return set(s.scalars(select(WorkerToken.id).where(WorkerToken.id.in_(list(token_ids)),
                                                               WorkerToken.revoked_at.is_(None))))

    def get(self, token_id: str) -> WorkerTokenRecord:
        with self.sessions() as s:
            return WorkerTokenRecord.of(found(s, WorkerToken, token_id, "worker token"))

    def page(self, include_revoked: bool = False) -> list[WorkerTokenRecord]:
        """Every token, oldest first (revoked ones only with `include_revoked`)."""
        return listed(self.sessions, WorkerToken, include_revoked, WorkerTokenRecord.of)

    def revoke(self, token_id: str) -> WorkerTokenRecord:
        """Revoke a token (idempotent): gateway calls are refused within the revocation bound."""
        record = revoke(self.sessions, WorkerToken, token_id, "worker token", WorkerTokenRecord.of)
        log.info("worker token %s revoked", token_id)
        return record


def _checked_kinds(kinds: Sequence[str]) -> list[str]:
    chosen = [k.strip() for k in kinds if k.strip()]
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or not chosen:
        raise InvalidWorkerToken(f"kinds must be some of {', '.join(KINDS)}; got {', '.join(chosen) or 'none'}")
    return sorted(set(chosen), key=KINDS.index)
