"""One batch as server-sent events: `counts` as they change, one `item` per finished job, then `done`.

`item` is the job's results-manifest line (`{"custom_id", "job_id", "status", "result": {"images": [{"key", "url",
"expires_at"}], "text"}, "error"}`, made by `storage.batches.manifests`, URLs presigned as it is sent), sent exactly once
per job: at open for the jobs already finished, later as their events arrive. `done` is the batch (`BatchOut`)
with its manifest URL, after every item. The stream watches the batch channel (`api.events.hub`): a wake-up reads
only the jobs named by the coalesced events (one query) and the counts (one grouped query), so one stream follows
10,000 items at the cost of its events, not of its size; a resync (Redis came back), the slow jittered
reconciliation and the end read the whole batch once to catch anything a lost message hid. Poll mode reads on a
one-second tick. Knows nothing of routes or of Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from api.events.hub import Watch
from api.events.job_stream import MAX_STREAM_SECONDS, KeepAlive, Timing, sse
from api.routes.batches import render as render_batch
from api.services import Services
from api.views import batch_out
from storage.records import BatchRecord, JobRecord
from storage.states import TERMINAL_STATUSES, JobStatus


class BatchFollower:
    """What one batch stream has sent: the items seen and the last counts."""

    def __init__(self, services: Services, batch: BatchRecord) -> None:
        self.services = services
        self.batch = batch
        self.seen: set[str] = set()
        self.last_counts: dict[str, int] | None = None
        self.seq = 0

    def _event(self, name: str, data: str) -> str:
        self.seq += 1
        return sse(name, data, self.seq)

    def items(self, jobs: list[JobRecord]) -> list[str]:
        """`item` events for the finished jobs not sent yet (reads nothing but presigns result URLs)."""
        out = []
        for job in jobs:
            if job.status in TERMINAL_STATUSES and job.id not in self.seen:
                self.seen.add(job.id)
                line = self.services.manifests.line(job)
                out.append(self._event("item", json.dumps(line, separators=(",", ":"))))
        return out

    def sweep(self) -> list[str]:
        """Read the whole batch: counts, and items for every finished job not sent yet."""
        self.batch = self.services.batches.get(self.batch.id)
        return self.items(self.services.batches.jobs(self.batch.id)) + self.counts()

    def update(self, job_ids: list[str]) -> list[str]:
        """Read only the jobs the events named, and the counts."""
        wanted = [j for j in job_ids if j not in self.seen]
        out = self.items(self.services.jobs.get_many(wanted)) if wanted else []
        self.batch = self.services.batches.get(self.batch.id)
        return out + self.counts()

    def counts(self) -> list[str]:
        if self.batch.counts == self.last_counts:
            return []
        self.last_counts = dict(self.batch.counts)
        return [self._event("counts", batch_out(self.batch).model_dump_json())]

    def done(self) -> list[str]:
        """The end: a last sweep (nothing missed), then `done` with the manifest URL."""
        out = self.sweep()
        view = render_batch(self.services, self.batch)
        return [*out, self._event("done", view.model_dump_json())]


async def batch_events(services: Services, watch: Watch, timing: Timing, batch: BatchRecord) -> AsyncIterator[str]:
    """The events of one batch, from `batch` (read after `watch` was registered)."""
    follower = BatchFollower(services, batch)
    started = time.monotonic()
    with watch:
        for chunk in await run_in_threadpool(follower.sweep):
            yield chunk
        quiet = KeepAlive(watch)
        while time.monotonic() - started < MAX_STREAM_SECONDS:
            if follower.batch.finished_at is not None:
                for chunk in await run_in_threadpool(follower.done):
                    yield chunk
                return
            async for chunk in quiet.until(time.monotonic() + timing.timeout(JobStatus.QUEUED)):
                yield chunk
            wake = quiet.wake
            if wake.dropped:
                return
            if wake.resync or wake.empty:
                chunks = await run_in_threadpool(follower.sweep)
            else:
                ids = [str(e["job_id"]) for e in wake.events if e.get("status") in TERMINAL_STATUSES]
                chunks = await run_in_threadpool(follower.update, ids)
            for chunk in chunks:
                yield chunk
            if chunks:
                quiet.sent()
