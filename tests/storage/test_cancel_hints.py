"""Cancel hints (`storage.jobs.events`): a transaction that asks a running job to stop tells the workers on Redis
(`{prefix}ev:cancel`) once it commits, so a worker reads cancel requests when one is asked for instead of every
step (`workers.runner.progress.BackgroundCancelWatcher`). A queued job's cancel (at once, no worker involved)
sends none; a canceled batch of thousands is a few messages."""

from __future__ import annotations

import json
from typing import Any

import redis

from storage.jobs.events import CANCEL_HINT_IDS, cancel_channel, cancel_events, channel_prefix
from tests.support.claims import claim_job
from tests.support.jobs import make_job
from tests.support.waiting import wait_for


def test_a_running_jobs_cancel_sends_one_hint_naming_it_and_a_queued_jobs_none(
    publishing_store: Any, object_store: Any, owner_id: str, settings: Any
) -> None:
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(cancel_channel(channel_prefix(settings.redis_url)))
    heard: list[dict[str, Any]] = []

    def hear() -> bool:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            heard.append(json.loads(message["data"]))
        return bool(heard)

    try:
        wait_for(lambda: pubsub.get_message(timeout=0.05) is None and pubsub.subscribed, "the subscription")
        running = make_job(publishing_store, object_store, owner_id, "generate", 64, seed=2, tag="hint-running")
        claim_job(publishing_store, running.id)
        queued = make_job(publishing_store, object_store, owner_id, "generate", 64, seed=1, tag="hint-queued")

        # When the owner cancels the queued job (at once) and then the running one (its worker must stop it)
        publishing_store.request_cancel(queued.id, owner_id)
        publishing_store.request_cancel(running.id, owner_id)

        # Then one hint went out, naming only the running job and the worker running it (whose long-poll it wakes)
        wait_for(hear, "the cancel hint")
        assert heard == [{"type": "cancel", "job_ids": [running.id], "workers": ["test-worker"]}]
    finally:
        pubsub.close()


def test_a_cancel_of_thousands_of_running_jobs_is_a_few_messages() -> None:
    ids = [f"job-{i}" for i in range(2 * CANCEL_HINT_IDS + 5)]
    events = cancel_events([(job_id, f"w{i % 3}") for i, job_id in enumerate(ids)])
    assert [len(e["job_ids"]) for e in events] == [CANCEL_HINT_IDS, CANCEL_HINT_IDS, 5]
    assert [j for e in events for j in e["job_ids"]] == ids
    assert [e["workers"] for e in events] == [["w0", "w1", "w2"]] * 3  # each message names its jobs' workers
    assert cancel_events([]) == []


def test_a_publisher_that_failed_sends_a_resync_with_its_next_publish(settings: Any, monkeypatch: Any) -> None:
    from storage.jobs import events
    from storage.jobs.events import RedisPublisher

    monkeypatch.setattr(events, "PAUSE_AFTER_FAILURE_S", 0.0)
    channel = cancel_channel(channel_prefix(settings.redis_url))
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    publisher = RedisPublisher(settings.redis_url)
    reachable = publisher.client
    try:
        wait_for(lambda: pubsub.get_message(timeout=0.05) is None and pubsub.subscribed, "the subscription")
        # Given a publish that failed (Redis unreachable: the hint is lost)
        publisher.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        publisher.publish(cancel_events([("lost-job", "w")]))
        # When the publisher can reach Redis again and publishes the next hint
        publisher.client = reachable
        publisher.publish(cancel_events([("next-job", "w")]))
        # Then a resync goes out first (workers read every cancel request), then the hint; and only once
        publisher.publish(cancel_events([("after-job", "w")]))
        heard: list[dict[str, Any]] = []

        def hear() -> bool:
            while (message := pubsub.get_message(timeout=0.05)) is not None:
                heard.append(json.loads(message["data"]))
            return len(heard) >= 3

        wait_for(hear, "the resync and the hints")
        assert heard == [{"type": "resync"}, {"type": "cancel", "job_ids": ["next-job"], "workers": ["w"]},
                         {"type": "cancel", "job_ids": ["after-job"], "workers": ["w"]}]
    finally:
        pubsub.close()
        publisher.close()
