"""The slow safety net of pushed job streams: one batched read per tick for all the streams that are due.

A pushed stream trusts its events, but a message can be lost (a publisher that could not reach Redis, say). Each
job stream registers here with what it last showed; about every `interval_s` (jittered 0.75-1.5x, so streams
opened together spread out) its job is due, and once a `TICK_S` the reconciler reads the rows of every due job
in ONE query and wakes (`Watch.resync`) only the streams whose row differs from what they showed. So the
reconciliation costs Postgres about one transaction per tick whatever the number of streams, and a stream reads
its own row only when something really changed. Knows nothing of HTTP or of Redis.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from api.background import stop_task
from api.events.hub import Watch
from storage.records import JobRecord

log = logging.getLogger(__name__)


TICK_S = 1.0
MAX_IDS_PER_READ = 1000

Shown = Callable[[], tuple[str, int | None]]


@dataclass
class _Entry:
    watch: Watch
    job_id: str
    shown: Shown  # (status, progress step) the stream last sent
    due: float


def row_state(job: JobRecord) -> tuple[str, int | None]:
    """What a stream compares: the status and the progress step."""
    return str(job.status), job.progress_step


class JobReconciler:
    """Registered job streams and the loop that re-checks them in batches."""

    def __init__(self, read_many: Callable[[Sequence[str]], list[JobRecord]], interval_s: float,
                 tick_s: float = TICK_S) -> None:
        self._read_many = read_many
        self._interval = interval_s
        self._tick = tick_s
        self._entries: dict[int, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reads = 0
        self.woken = 0

    def register(self, watch: Watch, job_id: str, shown: Shown) -> None:
        self._ensure_started()
        due = time.monotonic() + self._interval * random.uniform(0.75, 1.5)  # jitter, not crypto
        self._entries[id(watch)] = _Entry(watch, job_id, shown, due)

    def unregister(self, watch: Watch) -> None:
        self._entries.pop(id(watch), None)

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._run(), name="job-reconciler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                await self.check_due()
            except Exception:  # a failed pass is retried next tick; streams keep their events
                log.exception("job stream reconciliation failed")

    async def check_due(self, now: float | None = None) -> int:
        """One pass: read the due jobs in batches, wake the streams that are behind; how many were woken."""
        now = time.monotonic() if now is None else now
        due = [e for e in self._entries.values() if e.due <= now][:MAX_IDS_PER_READ]
        if not due:
            return 0
        rows = {j.id: j for j in await run_in_threadpool(self._read_many, [e.job_id for e in due])}
        self.reads += 1
        woken = 0
        for entry in due:
            entry.due = now + self._interval * random.uniform(0.75, 1.5)
            row = rows.get(entry.job_id)
            if row is not None and row_state(row) != entry.shown():
                entry.watch.resync()
                woken += 1
        self.woken += woken
        return woken
