"""Queue wake-ups name the keys whose jobs they announce (`storage.jobs.events.queued_events`), heard by a worker's
subscription (`workers.runner.wakeups.QueueWakeups.take_owners`): the real Redis, the real publishing store."""

from __future__ import annotations

from typing import Any

from storage.jobs.events import WAKEUP_OWNERS_MAX
from tests.support.jobs import make_together, new_job
from tests.support.storage import add_owner
from tests.support.waiting import wait_for
from workers.runner.wakeups import QueueWakeups


def test_a_wake_up_names_each_key_with_its_highest_priority_until_a_transaction_has_too_many_keys(
    settings: Any, publishing_store: Any, object_store: Any, session_factory: Any
) -> None:
    wakeups = QueueWakeups(settings.redis_url).start()
    try:
        wait_for(wakeups.listening.is_set, "the subscription")
        a, b = add_owner(session_factory), add_owner(session_factory)

        # Given one transaction queuing three jobs of two keys, and another of one key
        jobs = [new_job(object_store, a, "generate", 64, seed=1, priority=-10, tag="said"),
                new_job(object_store, a, "generate", 64, seed=2, priority=5, tag="said"),
                new_job(object_store, b, "generate", 64, seed=3, tag="said")]
        queue = jobs[0].queue
        heard = wakeups.heard(queue)
        make_together(publishing_store, jobs)
        wait_for(lambda: wakeups.heard(queue) > heard, "the first wake-up")
        make_together(publishing_store, [new_job(object_store, b, "generate", 64, seed=4, priority=2, tag="said")])
        wait_for(lambda: wakeups.heard(queue) > heard + 1, "the second wake-up")

        # Then one take hears both, each key at the highest priority announced
        assert wakeups.take_owners(queue) == (True, {a: 5, b: 2})
        assert wakeups.take_owners(queue) == (False, {})

        # And a transaction of more keys than a wake-up names says none of them (a listener must claim)
        many = [add_owner(session_factory) for _ in range(WAKEUP_OWNERS_MAX + 1)]
        heard = wakeups.heard(queue)
        make_together(publishing_store, [new_job(object_store, o, "generate", 64, seed=5, tag="said") for o in many])
        wait_for(lambda: wakeups.heard(queue) > heard, "the wake-up of many keys")
        assert wakeups.take_owners(queue) == (True, None)

        # And wake-ups a claim saw are not reported again (`seen_by_claim`), their keys neither
        make_together(publishing_store, [new_job(object_store, a, "generate", 64, seed=6, tag="said")])
        wait_for(lambda: wakeups.heard(queue) > heard + 1, "one more wake-up")
        counts = wakeups.counts()
        make_together(publishing_store, [new_job(object_store, b, "generate", 64, seed=7, priority=9, tag="said")])
        wait_for(lambda: wakeups.heard(queue) > heard + 2, "a wake-up after the claim")
        wakeups.seen_by_claim(queue, counts)
        assert wakeups.take_owners(queue) == (True, {b: 9})
    finally:
        wakeups.close()
