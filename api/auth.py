"""API key authentication with a short-lived in-process cache.

Every request presents a key; looking it up costs a database round trip and some ORM work, which at hundreds of
submissions per second is a good share of the request. `KeyCache` remembers the answer (the live key's record,
or "no such key") for `ttl` seconds per process, keyed by the key's sha256, so a revoked key stops working
within `ttl` seconds rather than at once: the usual trade of API gateways. `ttl = 0` disables it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from storage.keys import ApiKeyRecord, KeyStore

AUTH_CACHE_SECONDS = 2.0
MAX_ENTRIES = 10_000


class KeyCache:
    """`authenticate(plaintext)` through `keys.authenticate`, remembered for `ttl` seconds."""

    def __init__(self, keys: KeyStore, ttl: float = AUTH_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.ttl = ttl
        self.clock = clock  # seconds, monotonic (tests inject one)
        self._entries: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, plaintext: str) -> ApiKeyRecord | None:
        """The live key's record, or None for an unknown, malformed or revoked key."""
        if self.ttl <= 0:
            return self.keys.authenticate(plaintext)
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        now = self.clock()
        entry = self._entries.get(digest)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        record = self.keys.authenticate(plaintext)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (now, record)
        return record
