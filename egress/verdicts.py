"""A short-lived memory of webhook URLs the guard admitted, per API key, so a busy key is not re-resolved per job.

The API checks a `webhook_url` when a client names it (egress.url_guard resolves the name: a DNS round trip).
`VerdictCache` remembers an admitted URL for `ttl_seconds` (default 60 s), separately for each key, so one key's
checks never vouch for another's and a name that was rebound to a private address is refused again within a
minute. It is only a convenience for the API: the webhook worker checks the URL again right before every
delivery, whatever this cache says. Bounded (`max_entries`; the oldest are dropped). Standard library only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_TTL_SECONDS = 60.0
DEFAULT_MAX_ENTRIES = 10_000


class VerdictCache:
    """(owner, url) -> admitted until a monotonic deadline."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def admitted(self, owner_id: str, url: str) -> bool:
        """Whether `url` was admitted for this key less than `ttl_seconds` ago."""
        key = (owner_id, url)
        with self._lock:
            deadline = self._entries.get(key)
            if deadline is None:
                return False
            if deadline <= self._clock():
                del self._entries[key]
                return False
            return True

    def remember(self, owner_id: str, url: str) -> None:
        """Record that the guard admitted `url` for this key just now."""
        with self._lock:
            self._entries[(owner_id, url)] = self._clock() + self.ttl_seconds
            self._entries.move_to_end((owner_id, url))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
