"""Job events leave on the publisher's own thread (`storage.jobs.events.BackgroundPublisher`): a transaction's
commit never waits for Redis. Against a Redis that swallows requests and never answers (a partition: packets
dropped, not refused), commits return while the publish is still held; once the connection breaks the publish
fails and the next one, to a Redis that answers, sends the resync first. Events keep their order."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from storage.jobs.events import BackgroundPublisher, RedisPublisher, attach, cancel_channel, channel_prefix
from storage.jobs.store import JobStore
from tests.support.jobs import make_job
from tests.support.waiting import wait_for


class _BlackHole:
    """A TCP server that accepts connections and reads requests but never answers, until `release()` closes
    every connection (the client then sees its connection reset)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.received = threading.Event()  # a request arrived and is held
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                self.received.set()
        except OSError:
            return

    def release(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader thread and ends the client's wait
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[_BlackHole]:
    hole = _BlackHole()
    yield hole
    hole.release()


def test_commits_do_not_wait_for_a_redis_that_never_answers(
    engine: Any, object_store: Any, owner_id: str, settings: Any, black_hole: _BlackHole
) -> None:
    from storage.db import make_session_factory

    # Given a store whose events go to a Redis that holds every request (its timeout far beyond this test)
    publisher = BackgroundPublisher(RedisPublisher(f"redis://127.0.0.1:{black_hole.port}/0", timeout_s=120))
    sessions = make_session_factory(engine)
    attach(sessions, publisher)
    store = JobStore(sessions)
    # When jobs are created (each commit publishes its queue wake-up and status event)
    first = make_job(store, object_store, owner_id, "generate", 64, seed=1, tag="black-hole")
    wait_for(black_hole.received.is_set, "the first publish to reach the unanswering Redis")
    second = make_job(store, object_store, owner_id, "generate", 64, seed=2, tag="black-hole")
    # Then both commits returned while the first publish is still held (a publish on the committing thread
    # would have held the first commit for the whole timeout), and the second waits behind it
    assert store.get(first.id).status == store.get(second.id).status == "queued"
    assert publisher.pending == 2 and publisher.inner.published == 0
    # And once the connection breaks, the held publish fails (then the queued one, quiet after the failure)
    black_hole.release()
    wait_for(lambda: publisher.pending == 0, "the held publishes to end")
    assert publisher.inner.published == 0

    # When Redis answers again, the next publish goes out after a resync, and calls keep their order
    answering = RedisPublisher(settings.redis_url)
    publisher.inner.client, publisher.inner.prefix = answering.client, answering.prefix
    publisher.inner._quiet_until = 0.0  # the quiet spell after the failure is over
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(cancel_channel(channel_prefix(settings.redis_url)))
    heard: list[dict[str, Any]] = []

    def hear() -> bool:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            heard.append(json.loads(message["data"]))
        return len(heard) >= 4

    try:
        wait_for(lambda: pubsub.get_message(timeout=0.05) is None and pubsub.subscribed, "the subscription")
        for i in range(3):
            publisher.publish([{"type": "cancel", "job_ids": [f"job-{i}"], "workers": ["w"]}])
        wait_for(hear, "the resync and the three hints")
        assert heard == [{"type": "resync"}, *({"type": "cancel", "job_ids": [f"job-{i}"], "workers": ["w"]}
                                              for i in range(3))]
    finally:
        pubsub.close()
        publisher.close()
