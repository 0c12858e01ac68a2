"""Worker tokens remembered per API process, with a hard revocation bound and no database work per request.

Looking a worker token up costs a transaction; a thousand idle workers polling and beating make that most of
what an idle fleet costs the database. `WorkerTokenCache` keeps the live tokens this process has seen (keyed by
the token's sha256, like `api.auth.KeyCache`) and re-checks them ALL with one query (`WorkerTokenStore.live_ids`)
every `bound / 2` seconds while requests come in, dropping the ones revoked meanwhile. An entry is trusted only
while it was checked within `bound` seconds (by its own lookup or by a sweep that started after that), so a
revoke that has committed is refused by every API process at most `bound` seconds later (default 2 s), however
many tokens there are, and the sweep costs one transaction per `bound / 2` per process, not one per request.

The sweep runs in the request that finds it due (no thread to start or stop); others use their fresh entries
meanwhile, and an entry found stale (no sweep covered it in time: the database was slow or away) is looked up
directly, as without the cache. Unknown, malformed and revoked tokens are never remembered: each costs its own
lookup, as before. `bound = 0` turns the cache off. Each API process holds one (`api.services.Services`); the
gateway's `api.gateway.auth` asks it. Knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.credentials import hash_secret
from storage.fleet.tokens import TOKEN_PREFIX, WorkerTokenRecord, WorkerTokenStore

log = logging.getLogger(__name__)

REVOCATION_SECONDS = 2.0
MAX_ENTRIES = 10_000


@dataclass
class _Entry:
    record: WorkerTokenRecord
    checked_at: float  # when the database last said it was live (the start of the lookup or sweep that said so)


class WorkerTokenCache:
    """`authenticate(plaintext)` through `tokens.authenticate`, trusted for `bound` seconds past its last check."""

    def __init__(self, tokens: WorkerTokenStore, bound: float = REVOCATION_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = tokens
        self.bound = bound
        self.clock = clock  # seconds, monotonic (tests inject one)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._due_at = clock() + bound / 2
        self._sweeping = False
        self.sweeps = 0
        self.lookups = 0

    def authenticate(self, plaintext: str) -> WorkerTokenRecord | None:
        """The live token's record, or None for an unknown, malformed or revoked one."""
        if self.bound <= 0:
            return self.tokens.authenticate(plaintext)
        if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > 200:
            return None
        digest = hash_secret(plaintext)
        self._sweep_if_due()
        started = self.clock()
        entry = self._entries.get(digest)
        if entry is not None and started - entry.checked_at < self.bound:
            return entry.record
        self.lookups += 1
        record = self.tokens.authenticate(plaintext)
        with self._lock:
            if record is None:
                self._entries.pop(digest, None)
            else:
                if len(self._entries) >= MAX_ENTRIES and digest not in self._entries:
                    self._entries.clear()
                self._entries[digest] = _Entry(record, started)
        return record

    def _sweep_if_due(self) -> None:
        """Re-check every remembered token in one query, when half the bound has passed since the last sweep
        began (only one request sweeps at a time; the others go on with their entries). A sweep that fails (the
        database is away) is tried again half a bound later; meanwhile entries age out of trust."""
        started = self.clock()
        with self._lock:
            if self._sweeping or started < self._due_at or not self._entries:
                return
            self._sweeping, self._due_at = True, started + self.bound / 2
            ids = {e.record.id for e in self._entries.values()}
        try:
            live = self.tokens.live_ids(ids)
        except Exception as exc:  # noqa: BLE001 - the request goes on; a stale entry is looked up directly
            log.warning("could not re-check %d worker tokens (%s)", len(ids), exc)
            return
        finally:
            with self._lock:
                self._sweeping = False
        with self._lock:
            for digest, entry in list(self._entries.items()):
                if entry.record.id in live:
                    entry.checked_at = max(entry.checked_at, started)
                elif entry.record.id in ids:  # revoked (or gone) since: never trusted again
                    del self._entries[digest]
            self.sweeps += 1
