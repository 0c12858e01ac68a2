"""Enqueueing: messages are held until their rows are committed, dropped if the write fails, sent once each."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from api.enqueue import Enqueuer
from tests.support.api import queued_job_ids

QUEUE = "unipic.test.enqueue"


@dataclass
class Job:
    id: str
    queue: str = QUEUE


@pytest.fixture
def enqueuer(api_settings: Any, job_store: Any, redis_client: Any) -> Any:
    redis_client.delete(QUEUE)
    e = Enqueuer(api_settings, job_store)
    yield e
    e.close()
    redis_client.delete(QUEUE)


def built(enqueuer: Any, n: int, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the enqueuer has built (and, if it did not hold them, sent) `n` messages (observed, not changed)."""
    done, count, send = threading.Event(), [0], enqueuer._send

    def observed(producer: Any, job: Any) -> None:
        send(producer, job)
        count[0] += 1
        if count[0] == n:
            done.set()

    monkeypatch.setattr(enqueuer, "_send", observed)
    return done


def test_messages_wait_for_the_write_and_go_out_once(enqueuer: Any, redis_client: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [Job(f"00000000-0000-7000-8000-{i:012d}") for i in range(50)]
    all_built = built(enqueuer, len(jobs), monkeypatch)
    seen_during_write = []

    def write() -> str:
        assert all_built.wait(timeout=30)  # the sender built every message while the write was still running
        seen_during_write.append(redis_client.llen(QUEUE))
        return "written"

    assert enqueuer.send_after(jobs, write) == "written"
    assert seen_during_write == [0]
    assert sorted(queued_job_ids(redis_client, QUEUE)) == sorted(j.id for j in jobs)


def test_a_failed_write_sends_nothing(enqueuer: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    message_built = built(enqueuer, 1, monkeypatch)

    def write() -> None:
        assert message_built.wait(timeout=30)
        raise RuntimeError("database said no")

    with pytest.raises(RuntimeError, match="database said no"):
        enqueuer.send_after([Job("00000000-0000-7000-8000-000000000001")], write)
    assert redis_client.llen(QUEUE) == 0


def test_broker_down_still_writes(api_settings: Any, job_store: Any) -> None:
    down = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    enqueuer = Enqueuer(down, job_store)
    try:
        assert enqueuer.send_after([Job("00000000-0000-7000-8000-000000000002")], lambda: 42) == 42
        assert enqueuer.enqueue([Job("00000000-0000-7000-8000-000000000003")]) == []
    finally:
        enqueuer.close()
