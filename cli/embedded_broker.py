"""Housekeeping for the embedded SQLite broker that `unipic up` runs on (kombu's `sqla+sqlite://` transport).

That transport marks a consumed message invisible and never deletes it, so with beat sending a task every
second the broker file would grow by about 90 MB a day. `purge_consumed` deletes invisible rows older than a
margin; an unacknowledged message is held by its consumer in memory (and re-published on reject), so the row
is not needed. Only the embedded broker is touched; Redis needs none of this.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta

log = logging.getLogger(__name__)

PREFIX = "sqla+sqlite:///"
TABLE = "kombu_message"


def sqlite_path(broker_url: str) -> str | None:
    """The database file of an embedded broker URL, or None for any other broker."""
    return broker_url[len(PREFIX):] if broker_url.startswith(PREFIX) else None


def purge_consumed(broker_url: str, older_than_s: float = 600.0) -> int:
    """Delete consumed (invisible) messages older than `older_than_s`; returns how many. Never raises."""
    path = sqlite_path(broker_url)
    if path is None:
        return 0
    # kombu stamps messages with naive local time (datetime.now), stored as ISO text
    cutoff = (datetime.now() - timedelta(seconds=older_than_s)).isoformat(sep=" ")
    try:
        with sqlite3.connect(path, timeout=5.0) as conn:
            deleted = conn.execute(f"DELETE FROM {TABLE} WHERE visible = 0 AND timestamp < ?", (cutoff,)).rowcount
        conn.close()
    except sqlite3.Error as exc:  # locked or not created yet: try again next time
        log.warning("embedded broker purge skipped: %s", exc)
        return 0
    return int(deleted)
