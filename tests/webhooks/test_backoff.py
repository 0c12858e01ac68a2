"""The retry schedule: about a day of attempts with jitter, and `Retry-After` in both forms."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from workers.webhooks.backoff import (
    MAX_ATTEMPTS,
    SCHEDULE_SECONDS,
    next_attempt_at,
    parse_retry_after,
    retry_delay,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_schedule_with_jitter_then_give_up() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, rng=rng) for n in range(1, MAX_ATTEMPTS)]
    for delay, base in zip(delays, SCHEDULE_SECONDS, strict=True):
        assert delay is not None and 0.9 * base <= delay <= 1.1 * base
    assert retry_delay(MAX_ATTEMPTS) is None
    total = sum(SCHEDULE_SECONDS) / 3600
    assert 20 <= total <= 30  # "about a day"
    assert len({round(retry_delay(1, rng=rng) or 0, 6) for _ in range(5)}) > 1  # jittered


def test_retry_after_seconds_and_http_date_are_honored_and_capped() -> None:
    assert parse_retry_after("120", NOW) == 120
    date = format_datetime(NOW + timedelta(minutes=10), usegmt=True)
    assert parse_retry_after(date, NOW) == 600
    assert parse_retry_after("garbage", NOW) is None
    assert next_attempt_at(NOW, 1, "120") == NOW + timedelta(seconds=120)
    assert next_attempt_at(NOW, 1, str(7 * 24 * 3600)) == NOW + timedelta(hours=10)  # capped
    assert next_attempt_at(NOW, MAX_ATTEMPTS, "5") is None  # out of attempts regardless
