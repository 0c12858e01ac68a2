"""Parsing a `text/event-stream` into events (`event`, `data`), line by line.

Owns only the wire format (fields, blank-line dispatch, comments); the clients feed it the lines of
`GET /v1/jobs/{id}/events` and decide what each event means.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Event:
    event: str
    data: str


@dataclass
class EventParser:
    """Feed lines (without their newline); `feed` returns an `Event` when a blank line completes one."""

    _event: str = "message"
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._event = "message"
                return None
            done = Event(self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return done
        if line.startswith(":"):
            return None  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None
