"""Enqueueing: messages are held until their rows are committed, dropped if the write fails, sent once each."""

from __future__ import annotations

import time
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


def test_messages_wait_for_the_write_and_go_out_once(enqueuer: Any, redis_client: Any) -> None:
    jobs = [Job(f"00000000-0000-7000-8000-{i:012d}") for i in range(50)]
    seen_during_write = []

    def write() -> str:
        time.sleep(0.3)  # let the sender build (and, if it did not hold them, send) the messages meanwhile
        seen_during_write.append(redis_client.llen(QUEUE))
        return "written"

    assert enqueuer.send_after(jobs, write) == "written"
    assert seen_during_write == [0]
    assert sorted(queued_job_ids(redis_client, QUEUE)) == sorted(j.id for j in jobs)


def test_a_failed_write_sends_nothing(enqueuer: Any, redis_client: Any) -> None:
    def write() -> None:
        time.sleep(0.2)
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
