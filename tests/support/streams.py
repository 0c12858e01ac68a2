"""An event stream read in a thread, for tests that stop a server under it."""

from __future__ import annotations

import threading

import httpx


class EventFollower:
    """Reads an event stream in a thread until it ends: `opened` once its first event came; `ended` says how
    ("cleanly", or the error: a stream cut by a killed server is an incomplete chunked read)."""

    def __init__(self, url: str, key: str) -> None:
        self.opened = threading.Event()
        self.ended: str | None = None
        self.thread = threading.Thread(target=self._follow, args=(url, key), daemon=True)
        self.thread.start()

    def _follow(self, url: str, key: str) -> None:
        try:
            with httpx.stream("GET", url, headers={"Authorization": f"Bearer {key}"},
                              timeout=httpx.Timeout(10, read=120)) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        self.opened.set()
            self.ended = "cleanly"
        except httpx.HTTPError as exc:
            self.ended = repr(exc)
