"""The dispatch loop: ticks on its own threads (no Celery task, no beat entry, no broker), each tick's counts
heard by its observer, a tick that fails followed by the next one; and its wiring into the CPU Celery app."""

from __future__ import annotations

import threading
from typing import Any

from storage.routing import SWEEP_TASK
from tests.support.waiting import wait_for
from tests.support.webhooks import JobDriver, Receiver
from workers.app import make_celery
from workers.webhooks.dispatcher import DispatchLoop, register


def test_the_cpu_app_has_no_dispatch_task_nor_beat_entry(settings: Any) -> None:
    from workers.cpu import make_cpu_app

    app = make_cpu_app(settings)
    assert not [name for name in app.tasks if "webhook" in name]
    assert [e["task"] for e in app.conf.beat_schedule.values()] == [SWEEP_TASK]
    register(make_celery(settings), settings)  # registering twice (another app) adds nothing either


def test_the_loop_delivers_due_events_and_survives_a_failed_tick(
    receiver: Receiver, jobs: JobDriver, dispatcher: Any,
) -> None:
    # Given a succeeded job's due event, and a loop whose first tick fails (the database was down, say)
    job = jobs.create(receiver.url + "/loop", ["job.succeeded"])
    jobs.succeed(job)
    calls, counts = [0], []
    heard = threading.Event()

    def flaky() -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("database unavailable (fault injected)")
        return dispatcher

    def observe(tick: dict[str, int]) -> None:
        counts.append(tick)
        if tick:
            heard.set()

    # When the loop runs with two threads, a tick every 50 ms each
    loop = DispatchLoop(flaky, threads=2, interval=0.05, observe=observe).start()
    try:
        # Then the event is delivered once, and the observer hears the tick that delivered it
        assert len(receiver.wait_for(1)) == 1
        wait_for(heard.is_set, "the observer to hear the delivering tick")
        assert {"delivered": 1} in counts
        ticks = loop.ticks
        wait_for(lambda: loop.ticks >= ticks + 2, "more ticks (nothing due)")
    finally:
        loop.stop()
    assert not any(t.is_alive() for t in loop._threads)
    assert sum(c.get("delivered", 0) for c in counts) == 1
