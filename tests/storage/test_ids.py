"""Ids: UUIDv7, time-sortable, unique; webhook message ids."""

from __future__ import annotations

import time
import uuid

from storage.jobs.ids import id_time_ms, new_id, new_message_id


def test_uuid7_sortable_and_unique() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs(id_time_ms(ids[-1]) - time.time() * 1000) < 60_000  # wallclock-ok: embedded timestamp, not speed


def test_message_ids() -> None:
    ids = [new_message_id() for _ in range(100)]
    assert all(i.startswith("msg_") and len(i) == 30 for i in ids) and ids == sorted(ids)
