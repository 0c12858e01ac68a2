"""Job events go out on the publisher's own thread (`storage.jobs.publishing.BackgroundPublisher`): a commit never
waits for Redis, events keep their commit order, a backlog Redis cannot take is dropped and told (a resync), a
forked child publishes on a thread of its own, and what waits at exit goes out. Real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from storage.jobs.events import RedisPublisher, cancel_channel, channel_pattern, channel_prefix, job_channel
from storage.jobs.publishing import BackgroundPublisher
from tests.support import REPO
from tests.support.waiting import wait_for


class _HeldRedis(RedisPublisher):
    """A Redis publisher whose publishes wait at a gate (Redis that stopped answering), each call recorded."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate, self.entered = threading.Event(), threading.Event()

    def publish(self, events: Any) -> None:
        self.entered.set()
        self.gate.wait(60)
        super().publish(events)


class _Heard:
    """Every message on the prefix's channels, in order, as (channel suffix, body)."""

    def __init__(self, url: str) -> None:
        self.prefix = channel_prefix(url)
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(channel_pattern(self.prefix))
        self.messages: list[tuple[str, dict[str, Any]]] = []
        wait_for(lambda: self.pubsub.get_message(timeout=0.05) is None and self.pubsub.subscribed, "a subscription")

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            self.messages.append((message["channel"].decode().removeprefix(self.prefix),
                                  json.loads(message["data"])))
        return self.messages


@pytest.fixture
def heard(settings: Any) -> Iterator[_Heard]:
    h = _Heard(settings.redis_url)
    yield h
    h.pubsub.close()


def _status(job_id: str, status: str) -> dict[str, Any]:
    return {"type": "status", "job_id": job_id, "status": status}


def test_a_commit_does_not_wait_for_redis_and_its_events_keep_their_order(settings: Any, heard: _Heard) -> None:
    # Given a publisher whose Redis holds its first publish
    inner = _HeldRedis(settings.redis_url)
    publisher = BackgroundPublisher(inner)
    told: list[list[str]] = []
    publisher.listen_locally(lambda events: told.append([e["status"] for e in events]))
    try:
        # When three transactions' events are handed over while it is held
        publisher.publish([_status("j1", "running")])
        wait_for(inner.entered.is_set, "the thread to take the first events")
        publisher.publish([_status("j1", "succeeded"), _status("j2", "running")])
        publisher.publish([_status("j2", "failed")])
        # Then every call returned with Redis still held, and local listeners were told at once
        assert not inner.gate.is_set() and not publisher.flush(0)
        assert told == [["running"], ["succeeded", "running"], ["failed"]]
        # And once Redis answers, the events go out in commit order
        inner.gate.set()
        assert publisher.flush(30)
        wait_for(lambda: len(heard.take()) >= 4, "the four events")
        assert [(channel, body["job_id"], body["status"]) for channel, body in heard.take()] == [
            ("ev:job:j1", "j1", "running"), ("ev:job:j1", "j1", "succeeded"), ("ev:job:j2", "j2", "running"),
            ("ev:job:j2", "j2", "failed")]
        assert job_channel(heard.prefix, "j1").endswith("ev:job:j1")
    finally:
        inner.gate.set()
        publisher.close()


def test_events_redis_cannot_take_are_dropped_and_the_next_publish_tells_of_it(settings: Any, heard: _Heard) -> None:
    # Given a publisher that lets two transactions wait, its Redis holding the first publish
    inner = _HeldRedis(settings.redis_url)
    publisher = BackgroundPublisher(inner, max_pending=2)
    try:
        publisher.publish([_status("a", "running")])
        wait_for(inner.entered.is_set, "the thread to take the first events")
        # When three more transactions commit meanwhile
        for job in ("b", "c", "d"):
            publisher.publish([_status(job, "running")])
        # Then the third is dropped (counted), and when Redis answers the first publish after the drop (the held
        # one: it had not sent yet) says so with a resync before its events, and the rest go out; only one resync
        assert publisher.dropped == 1
        inner.gate.set()
        assert publisher.flush(30)
        publisher.publish([_status("e", "running")])
        assert publisher.flush(30)
        wait_for(lambda: len(heard.take()) >= 5, "the events and the resync")
        assert [(channel, body.get("job_id", body["type"])) for channel, body in heard.take()] == [
            ("ev:cancel", "resync"), ("ev:job:a", "a"), ("ev:job:b", "b"), ("ev:job:c", "c"), ("ev:job:e", "e")]
        assert cancel_channel(heard.prefix).endswith("ev:cancel")
    finally:
        inner.gate.set()
        publisher.close()


def test_a_forked_child_publishes_on_a_thread_of_its_own(settings: Any, heard: _Heard) -> None:
    # Given a publisher whose thread is busy (held) when the process forks
    inner = _HeldRedis(settings.redis_url)
    publisher = BackgroundPublisher(inner)
    try:
        publisher.publish([_status("parent", "running")])
        wait_for(inner.entered.is_set, "the thread to take the parent's events")
        inner.gate.set()  # the child's copy of the gate is open; the parent's thread goes on
        # When the child publishes and waits for its events to go out
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            publisher.publish([_status("child", "running")])
            os._exit(0 if publisher.flush(30) else 1)
        _, status = os.waitpid(pid, 0)
        # Then they went out from the child (its own thread: the parent's is not there after a fork)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_for(lambda: {body["job_id"] for _, body in heard.take()} >= {"parent", "child"}, "both events")
    finally:
        inner.gate.set()
        publisher.close()


def test_what_waits_at_exit_goes_out(settings: Any, heard: _Heard) -> None:
    # Given a process that publishes and exits at once (no close)
    script = ("import sys\nfrom storage.jobs.events import RedisPublisher\n"
              "from storage.jobs.publishing import BackgroundPublisher\n"
              "BackgroundPublisher(RedisPublisher(sys.argv[1])).publish("
              "[{'type': 'status', 'job_id': 'at-exit', 'status': 'succeeded'}])\n")
    # When it ends
    done = subprocess.run([sys.executable, "-c", script, settings.redis_url], cwd=REPO, timeout=120)
    # Then its event was published before it did
    assert done.returncode == 0
    wait_for(lambda: any(body.get("job_id") == "at-exit" for _, body in heard.take()), "the event sent at exit")


def test_a_publisher_whose_thread_ended_idle_starts_another(
    settings: Any, heard: _Heard, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from storage.jobs import publishing

    # Given a publisher whose thread ended after its idle spell
    monkeypatch.setattr(publishing, "IDLE_SECONDS", 0.01)
    publisher = BackgroundPublisher(RedisPublisher(settings.redis_url))
    try:
        publisher.publish([_status("before", "running")])
        wait_for(lambda: publisher._thread is None, "the thread to end, idle")
        # When the next transaction commits
        publisher.publish([_status("after", "running")])
        # Then its events go out too
        wait_for(lambda: [body["job_id"] for _, body in heard.take()] == ["before", "after"], "both events")
    finally:
        publisher.close()
