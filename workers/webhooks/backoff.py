"""When to try a failed webhook delivery again: a fixed schedule with jitter, or the receiver's `Retry-After`.

The schedule spreads eight attempts over about a day (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after each
failure), each delay scaled by a random factor in [1 - JITTER, 1 + JITTER] so a receiver that comes back does not
get every queued event in the same second. A `Retry-After` answer (seconds or an HTTP date) replaces the
scheduled delay, bounded to [MIN_RETRY_AFTER, MAX_RETRY_AFTER]. Pure functions: no clock, no storage.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

SCHEDULE_SECONDS: tuple[float, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_ATTEMPTS = len(SCHEDULE_SECONDS) + 1
JITTER = 0.1
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 10 * 3600.0


def retry_delay(
    attempts_made: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before the next attempt after `attempts_made` failed ones; None means give up."""
    if attempts_made < 1 or attempts_made >= MAX_ATTEMPTS:
        return None
    if retry_after is not None:
        return min(max(retry_after, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
    base = SCHEDULE_SECONDS[attempts_made - 1]
    return base * (1 + (rng or random).uniform(-JITTER, JITTER))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` named by a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def next_attempt_at(
    now: datetime,
    attempts_made: int,
    retry_after_header: str | None = None,
    rng: random.Random | None = None,
) -> datetime | None:
    """The time of the next attempt, or None when the event has used all its attempts."""
    delay = retry_delay(attempts_made, parse_retry_after(retry_after_header, now), rng)
    return None if delay is None else now + timedelta(seconds=delay)
