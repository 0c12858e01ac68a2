"""Putting accepted jobs on the broker: one `run_batch` message per job, by task name.

The API builds its own minimal Celery app (broker URL only, JSON messages, no result backend) and sends by name
with `send_task` through `storage.routing.RunBatchSender` (the one sender, shared with the workers and the
sweeper), so it never imports the worker code, torch or the model. Sends reuse one producer (one connection) per
call and go out through kombu's producer batch (one Redis pipeline per thousand messages), which keeps a
10,000-item batch fast. After sending, `JobStore.mark_enqueued` stamps `last_enqueued_at` once for all of them
(single submissions are stamped together every few tens of milliseconds by `SentMarks`); a job whose send
failed stays `queued` in Postgres and the sweeper re-enqueues it, so a broker hiccup loses nothing. This is the one enqueue contract
(`storage.routing`: rows committed, then send, then stamp), with `JobRef`s from there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from celery import Celery

from storage.jobs.store import JobStore
from storage.routing import MESSAGE_CONF, JobRef, RunBatchSender
from storage.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

MARK_INTERVAL_SECONDS = 0.05


def make_sender(settings: Settings) -> Celery:
    """A send-only Celery app for `settings.broker_url` (never started as a worker)."""
    app = Celery("unipic-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(**MESSAGE_CONF, broker_connection_timeout=3)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # fail fast when Redis is down: the job is safe in Postgres and the sweeper re-enqueues it
        app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 3, "max_retries": 2}
    return app


class SentMarks:
    """Records `last_enqueued_at` for single submissions with one UPDATE per `interval` (a daemon thread).

    Under load this turns hundreds of small commits per second into a few. A job sent but not yet marked looks
    "never enqueued" to the sweeper, which may send it again: a duplicate message is a no-op for the workers
    (the claim is a compare-and-set), so the only cost of losing marks (crash, database down) is that.
    """

    def __init__(self, job_store: JobStore, interval: float = MARK_INTERVAL_SECONDS) -> None:
        self.job_store = job_store
        self.interval = interval
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            self._pending.extend(job_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unipic-sent-marks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        """Write the pending marks now."""
        with self._lock:
            ids, self._pending = self._pending, []
        if not ids:
            return
        try:
            self.job_store.mark_enqueued(ids)
        except Exception as exc:  # noqa: BLE001 - see the class docstring: the sweeper may re-send them
            log.warning("could not mark %d sent jobs (first %s): %s", len(ids), ids[0], exc)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
        self._stop.clear()  # reusable: the next `add` starts a new thread


def holds_messages(broker_url: str) -> bool:
    """Whether this broker can hold published messages in one pipeline until a context exits: kombu's Redis
    transport with producer batches (kombu >= 5.7)."""
    from kombu import Producer

    return broker_url.startswith(("redis://", "rediss://")) and hasattr(Producer, "batch")


class Enqueuer:
    """Sends job messages and records that they were sent."""

    def __init__(self, settings: Settings, job_store: JobStore) -> None:
        self.celery = make_sender(settings)
        self.sender = RunBatchSender(self.celery, span="unipic.api.enqueue")  # one per process
        self.job_store = job_store
        self.marks = SentMarks(job_store)
        self._holds = holds_messages(settings.broker_url)

    def _send(self, producer: Any, job: JobRef) -> None:
        self.sender.send(producer, job)

    def enqueue(self, jobs: Sequence[JobRef], mark_later: bool = False) -> list[str]:
        """Send one message per job (one producer for all), then mark them enqueued (now, or with `mark_later`
        in the next coalesced update); returns the ids sent."""
        sent: list[str] = []
        if not jobs:
            return sent
        try:
            self.sender.send_all(jobs, sent)
        except Exception:
            log.exception("enqueue failed after %d of %d jobs (first %s); the sweeper will re-enqueue",
                          len(sent), len(jobs), jobs[0].id)
        if sent and (mark_later or len(sent) == 1):
            self.marks.add(sent)
        elif sent:
            self.job_store.mark_enqueued(sent)
        return sent

    def send_after(self, jobs: Sequence[JobRef], write: Callable[[], T]) -> T:
        """Run `write()` (which stores `jobs`) while their messages are built and held in one Redis pipeline;
        send the pipeline only once `write` returned, then mark them. Returns what `write` returned and raises
        what it raised (nothing is sent then). Messages are never sent before their rows are committed."""
        if not jobs or not self._holds:
            result = write()
            self.enqueue(jobs)
            return result
        with ThreadPoolExecutor(1, thread_name_prefix="unipic-write") as pool:
            written = pool.submit(write)
            sent = False
            try:
                with self.celery.producer_or_acquire() as producer, producer.batch(len(jobs) + 1):
                    for job in jobs:
                        self._send(producer, job)
                    written.result()  # a failed write aborts the held pipeline: nothing goes out
                sent = True
            except Exception:
                if not (written.done() and written.exception() is not None):
                    log.exception("enqueue of %d jobs failed (first %s); the sweeper will re-enqueue",
                                  len(jobs), jobs[0].id)
            result = written.result()
        if sent:
            self.job_store.mark_enqueued([job.id for job in jobs])
        return result

    def close(self) -> None:
        self.marks.close()
        self.celery.close()
