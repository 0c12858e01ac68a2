"""Dynamic batching: one `run_batch` message becomes one model call over every compatible queued job.

A message is a wake-up for its job's queue: the worker claims the next batch of that queue as the scheduling
policy decides (`storage.scheduling.policy`: fair share across keys, then priority and age; compatible batch-mates in the
same order) up to its item and pixel budget; a message that finds its queue empty is a no-op. Then:
decode inputs -> build requests -> run the engine (leases renewed, progress reported, cancellations and time
limits checked between steps) -> encode -> upload -> `complete()`. Failures stay with the items they belong to,
as in TGI's batch filter: an undecodable input fails only its job (`invalid_input`); an out-of-memory error
splits the batch in halves (a single item that cannot fit fails with `out_of_memory`); any other model error is
bisected down to the items that raise it (`model_error`). Jobs whose lease was lost are dropped silently and
nothing of theirs is uploaded: results go under the claim's own lease keys, and only while the lease keeper can
prove the lease (`LeaseKeeper.holds`); the store's fencing token would refuse a stale completion anyway. A
finished result whose upload or `complete` fails on the network is retried while the lease holds, not recomputed.
The worker stays alive through all of it.
Pipelined (`pipeline=True`, `UNIPIC_WORKER_PIPELINE`), encode -> upload -> `complete()` of a batch run in the
background (`workers.runner.pipeline`, one batch in flight) while the next batch samples; leases stay renewed until then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from storage.jobs.params import progress_total
from storage.records import Claim, JobRecord
from storage.settings import Settings
from storage.states import JobErrorCode, JobStatus
from workers.device.health import DeviceFatal
from workers.faults import FaultInjector
from workers.metrics import WorkerMetrics
from workers.runner.encoding import InvalidInput
from workers.runner.engine import Engine, ModelRequest, ModelResult, run_model
from workers.runner.inputs import prepare
from workers.runner.leases import LeaseKeeper
from workers.runner.limits import BatchClock, hard_limit_seconds, soft_limit_seconds
from workers.runner.oom import failure_code, halves, is_oom, release_cached_memory
from workers.runner.pipeline import FinishPipeline
from workers.runner.progress import BackgroundCancelWatcher, ProgressReporter
from workers.runner.results import LeaseLost, UploadFailed, WrittenResult, write_result
from workers.runner.traces import trace_failure, trace_success
from workers.runner.wakeups import CancelHints
from workers.shutdown import ShutdownGate
from workers.transport.base import (
    CancelHintSource,
    HearsCancels,
    JobPort,
    ObjectPort,
    QueueClaims,
    Unreachable,
)

log = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 0.25
FINISHING_THREADS = 4
# between attempts at `complete` once the transport's own retries are spent, each only while the lease holds
COMPLETE_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 8.0)


@dataclass
class Item:
    """One claimed job on its way through the batch."""

    job: JobRecord
    claim: Claim
    request: ModelRequest
    done: bool = False


@dataclass
class BatchState:
    """What the checks between sampling steps need to know about the running batch."""

    claims: dict[str, Claim]
    clock: BatchClock
    keeper: LeaseKeeper
    reporter: ProgressReporter
    watcher: BackgroundCancelWatcher
    released: list[Claim] = field(default_factory=list)
    deferred: bool = False  # pipelined: successes are finished after the call, beside the next batch
    finishing: list[tuple[Item, ModelResult, float, int]] = field(default_factory=list)


class BatchRunner:
    """Runs `run_batch(job_id)` messages (or batches claimed elsewhere: `run_claims`) against one loaded engine,
    over either transport (`workers.transport.base`: the direct stores or the HTTPS worker gateway)."""

    def __init__(
        self,
        *,
        store: JobPort,
        objects: ObjectPort,
        engine: Engine,
        settings: Settings,
        worker_id: str,
        metrics: WorkerMetrics,
        shutdown: ShutdownGate,
        enqueue: Callable[[Sequence[JobRecord]], None],
        faults: FaultInjector | None = None,
        device: str = "cpu",
        pipeline: bool = False,
    ) -> None:
        self.store, self.objects, self.engine, self.settings = store, objects, engine, settings
        self.worker_id, self.metrics, self.shutdown, self.enqueue = worker_id, metrics, shutdown, enqueue
        self.faults = faults or FaultInjector()
        self.device = device
        self.batches_served = 0
        self.jobs_served = 0
        self._finishers = ThreadPoolExecutor(max_workers=FINISHING_THREADS, thread_name_prefix="finish")
        self.pipeline = FinishPipeline(pipeline)  # encode/upload/complete of batch N while N+1 samples
        self._cancel_hints: CancelHintSource | None = None
        self.left_asked_at: float | None = None  # when the claim of the last `left_claims` was asked

    @property
    def cancel_hints(self) -> CancelHintSource | None:
        """The process's cancel hints, started at the first batch: a gateway worker's cancel long-polls, or a
        direct worker's Redis subscription. A running batch reads cancel requests when one is heard, and once a
        second anyway, instead of every few steps (`BackgroundCancelWatcher`)."""
        if self._cancel_hints is None:
            if isinstance(self.store, HearsCancels):
                self._cancel_hints = self.store.cancel_hints()
            elif self.settings.redis_url and isinstance(self.store, QueueClaims):  # the database itself
                self._cancel_hints = CancelHints(self.settings.redis_url).start()
        return self._cancel_hints

    # ---- one message ----------------------------------------------------------------------------------------
    def run(self, job_id: str) -> int:
        """Claim and run the batch `job_id` seeds; returns how many jobs were claimed (0 = no-op)."""
        if self.settings.batch_wait_ms:
            time.sleep(self.settings.batch_wait_ms / 1000)  # let compatible jobs arrive for a fuller batch
        started = time.monotonic()
        claims = self._claim(job_id)
        if not claims:
            log.debug("job %s: already taken or no longer queued; message acked as a no-op", job_id)
            return 0
        return self.run_claims(claims, started)

    def run_claims(self, claims: list[Claim], started: float | None = None) -> int:
        """Run a batch already claimed (by `run`, or by the gateway's claim); returns how many jobs it held.
        `started`: when the claim was asked (monotonic; None: not known), so cancel hints heard since cover it."""
        asked_at = started
        started = time.monotonic() if started is None else started
        jobs = {j.id: j for j in self.store.get_many([c.job_id for c in claims])}
        self._observe_claimed(jobs.values())
        items = [item for item in (self._prepare(c, jobs[c.job_id]) for c in claims) if item is not None]
        if items:
            try:
                self._run_items(claims, items, asked_at)
            except DeviceFatal:  # the device broke: the whole batch goes back (attempts unchanged); we exit
                self.pipeline.drain()  # the previous batch's results still get written
                self._release(claims)
                raise
        self.batches_served += 1
        self.jobs_served += len(claims)
        log.info("batch of %d %s finished in %.2fs: %s", len(claims), next(iter(jobs.values())).compat_key,
                 time.monotonic() - started, [c.job_id for c in claims])
        self.metrics.observe_gpu_memory(self.device)
        return len(claims)

    def _claim(self, job_id: str) -> list[Claim]:
        """Claim the batch. The message is a wake-up for its job's queue: the store claims the best queued jobs
        of that queue by the scheduling policy (`storage.scheduling.policy`), whether or not this job is among them,
        and waits for row locks before giving up, so an empty claim means the queue had nothing claimable (or
        the job is unknown, or of a kind this worker does not serve). No retry."""
        s = self.settings
        return self.store.claim_for_message(
            job_id, self.worker_id, s.lease_seconds, s.worker_max_batch, s.worker_batch_pixel_budget,
            kinds=s.worker_kinds,
        )

    def _observe_claimed(self, jobs: Iterable[JobRecord]) -> None:
        jobs = list(jobs)
        self.metrics.observe_batch(jobs)
        log.debug("batch of %d (%s): %s", len(jobs), jobs[0].compat_key, [j.id for j in jobs])

    def _prepare(self, claim: Claim, job: JobRecord, request: ModelRequest | None = None) -> Item | None:
        """The job's item, its input read and decoded here unless `request` was built already (a continuous
        loop reads inputs with the claim, off its sampling thread); None if it failed for invalid input."""
        try:
            return Item(job, claim, request if request is not None else prepare(self.objects, job))
        except InvalidInput as exc:
            log.warning("job %s: invalid input: %s", job.id, exc)
            self._fail(claim, JobErrorCode.INVALID_INPUT, str(exc))
            return None

    def _run_items(self, claims: list[Claim], items: list[Item], asked_at: float | None = None) -> None:
        s = self.settings
        soft = soft_limit_seconds(
            [(i.job.kind, i.job.params) for i in items], s.time_limit_floor_seconds,
            s.time_limit_seconds_per_megapixel_step,
        )
        clock = BatchClock(soft, hard_limit_seconds(soft, s.lease_seconds))
        by_id = {c.job_id: c for c in claims}
        totals = {i.job.id: progress_total(i.job.kind, i.job.params) for i in items}
        reporter = ProgressReporter(self.store, by_id, s.progress_interval_ms / 1000, self.faults.on_step, totals)
        keeper = LeaseKeeper(self.store, claims, s.lease_seconds, stop_renewing=clock.hard_expired).__enter__()
        try:
            # cancel requests read off the sampling thread: when one is heard, else every CANCEL_CHECK_SECONDS
            watcher = BackgroundCancelWatcher(self.store, CANCEL_CHECK_SECONDS, self.cancel_hints,
                                              local=lambda: self._local_drops(set(by_id), clock, keeper, reporter))
            with reporter, watcher:
                watcher.watch(list(by_id), asked_at)
                state = BatchState(by_id, clock, keeper, reporter, watcher, deferred=self.pipeline.enabled)
                self._run_group(items, state)
        except BaseException:
            keeper.__exit__(None, None, None)
            raise
        # leases stay renewed until every result is written (in the background when pipelined)
        self.pipeline.submit(lambda: self._finish_batch(items, state))

    def _finish_batch(self, items: list[Item], state: BatchState) -> None:
        """Encode, upload and complete the successes `_run_group` deferred; then stop renewing, hand back."""
        try:
            self._succeed_all(state.finishing, state.keeper)
            for item in items:
                state.keeper.finish(item.job.id)
        finally:
            state.keeper.__exit__(None, None, None)
        if state.released:
            self._release(state.released)

    def _succeed_all(self, finishing: list[tuple[Item, ModelResult, float, int]], keeper: LeaseKeeper) -> None:
        # encode + upload + complete are I/O bound: overlap them across the batch
        list(self._finishers.map(lambda f: self._succeed(f[0], f[1], f[2], f[3], keeper), finishing))

    def left_claims(self) -> list[Claim]:
        """Jobs claimed for this worker that no batch runs yet (none here; a continuous gateway runner's last
        look may have taken some, asked at `left_asked_at`)."""
        return []

    def drain(self) -> None:
        """Wait for the batch whose results are being written in the background (before exiting); the
        transport's own cancel hints stop (a gateway worker's poll in flight ends now, not at its wait)."""
        self.pipeline.drain()
        if isinstance(self.store, HearsCancels) and self._cancel_hints is not None:
            self._cancel_hints = None
            self.store.stop_cancel_hints()

    # ---- the model call, with out-of-memory splitting -------------------------------------------------------
    def _run_group(self, items: list[Item], state: BatchState) -> None:
        drops = state.watcher()
        if drops:  # dropped before the call (e.g. shutdown during an OOM retry): settle without running
            for item in [i for i in items if i.job.id in drops]:
                self._settle_dropped(item, state)
            items = [i for i in items if not i.done]
            if not items:
                return
        state.reporter.reset()
        started = time.perf_counter()
        try:
            self.faults.before_model_call(len(items), sum(i.job.pixels for i in items))
            results = run_model(self.engine, [i.request for i in items], state.reporter, state.watcher)
        except Exception as exc:  # noqa: BLE001 - classified below; the worker must survive any of it
            self.metrics.observe_model_call(time.perf_counter() - started)
            self._on_model_error(items, state, exc)
            return
        seconds = time.perf_counter() - started
        self.metrics.observe_model_call(seconds, items[0].job, len(items))
        by_id = {r.id: r for r in results}
        succeeded = []
        for item in items:
            result = by_id.get(item.job.id)
            if result is None:
                self._fail(item.claim, JobErrorCode.MODEL_ERROR, "the engine returned no result for this job")
                item.done = True
            elif result.canceled:
                self._settle_dropped(item, state)
            else:
                succeeded.append((item, result))
        finishing = [(item, result, result.seconds or seconds, len(items)) for item, result in succeeded]
        if state.deferred:  # written after the call, beside the next batch's sampling (leases still renewed)
            state.finishing.extend(finishing)
            return
        self._succeed_all(finishing, state.keeper)
        for item in items:
            state.keeper.finish(item.job.id)  # settled: stop renewing its lease

    def _on_model_error(self, items: list[Item], state: BatchState, exc: Exception) -> None:
        oom = is_oom(exc)
        if oom:
            release_cached_memory()
        ids = [i.job.id for i in items]
        if len(items) == 1:
            code = failure_code(exc)
            log.warning("job %s: %s: %s", ids[0], code, exc)
            self._fail(items[0].claim, code, str(exc) or type(exc).__name__)
            items[0].done = True
            state.keeper.finish(ids[0])
            return
        if oom:
            self.metrics.oom_splits.inc()
            log.warning("out of memory on a batch of %d %s: splitting in halves", len(items), ids)
        else:
            log.exception("model error on a batch of %d %s: bisecting to find the failing items", len(items), ids)
        for half in halves(items):
            self._run_group(half, state)

    # ---- settling each item ---------------------------------------------------------------------------------
    def _succeed(self, item: Item, result: ModelResult, model_seconds: float, call_size: int,
                 keeper: LeaseKeeper) -> None:
        job = item.job
        item.done = True
        try:  # written under this lease's own keys, and only while the lease is provably held
            written = write_result(self.objects, job, item.claim.lease_token, result, self.engine.model_id,
                                   still_held=lambda: keeper.holds(job.id))
        except LeaseLost as exc:
            log.warning("%s; dropped without completing", exc)
            return
        except UploadFailed as exc:
            log.error("job %s: %s; handing it back to the queue", job.id, exc)
            self._release([item.claim])
            return
        except Exception as exc:
            log.exception("job %s: encoding its result failed", job.id)
            self._fail(item.claim, JobErrorCode.MODEL_ERROR, f"encoding the result failed: {exc}")
            return
        timings = {"model_seconds": model_seconds, "upload_seconds": written.upload_seconds}
        ok = self._complete(item.claim, written, timings, keeper)
        keeper.finish(job.id)  # settled: a renewal racing the completion must not read it as a lost lease
        self.metrics.observe_success(job, model_seconds / call_size, ok)
        trace_success(job, model_seconds, written.upload_seconds, call_size, ok)
        log.debug("job %s succeeded in a call of %d (model %.3fs, upload %.3fs)%s", job.id, call_size,
                 model_seconds, written.upload_seconds, "" if ok else " but its lease was lost")

    def _complete(self, claim: Claim, written: WrittenResult, timings: dict[str, float], keeper: LeaseKeeper,
                  sleep: Callable[[float], None] = time.sleep) -> bool:
        """Report a written result; while the store is unreachable, retry with backoff for as long as the lease is
        provably held (renewals go on meanwhile), so a finished job is reported, not recomputed. Repeating is safe:
        `complete` is fenced by the lease token. Once the lease cannot be proven it gives up (False): nothing more
        is written, and the job returns to the queue when its lease expires."""
        for pause in (*COMPLETE_BACKOFF_SECONDS, None):
            try:
                return self.store.complete(claim, written.keys, written.text, timings, self.engine.model_id,
                                           self.engine.revision)
            except Unreachable as exc:
                if pause is None or not keeper.holds(claim.job_id):
                    log.error("job %s: cannot report its result (%s) and its lease is not provably held; "
                              "giving it up", claim.job_id, exc)
                    return False
                log.warning("job %s: complete failed (%s); retrying in %.1fs while the lease holds",
                            claim.job_id, exc, pause)
                sleep(pause)
        raise AssertionError("unreachable")

    def _settle_dropped(self, item: Item, state: BatchState) -> None:
        """An item the engine dropped (or we skipped): say why in the store."""
        job_id = item.job.id
        item.done = True
        if job_id in state.keeper.lost():
            log.warning("job %s: lease lost; dropped without writing", job_id)
        elif job_id in state.watcher.requested:
            self.store.cancel_running(item.claim)
            self.metrics.jobs.labels(JobStatus.CANCELED).inc()
        elif state.clock.soft_expired():
            self._fail(item.claim, JobErrorCode.TIMEOUT,
                       f"batch exceeded its time limit of {state.clock.soft_seconds:.0f}s")
        else:  # shutdown (or anything else that stopped us): hand it back untouched
            state.released.append(item.claim)

    def _local_drops(
        self, job_ids: set[str], clock: BatchClock, keeper: LeaseKeeper, reporter: ProgressReporter
    ) -> set[str]:
        """Jobs to drop for the worker's own reasons: lost leases; everything past the time limit or when a
        shutdown cannot wait for the batch."""
        drops = keeper.lost()
        if clock.soft_expired() or self.shutdown.should_abandon(clock.started, reporter.fraction):
            drops |= job_ids
        return drops

    def _fail(self, claim: Claim, code: JobErrorCode, message: str) -> None:
        self.store.fail(claim, code, message)
        trace_failure(claim.job_id, code, message)
        self.metrics.jobs.labels(code).inc()

    def _release(self, claims: list[Claim]) -> None:
        """Hand jobs back to the queue (attempts unchanged) and send them a fresh message."""
        released = self.store.release(claims)
        log.warning("released %d jobs %s back to the queue", released, [c.job_id for c in claims])
        jobs = [j for j in self.store.get_many([c.job_id for c in claims]) if j.status == JobStatus.QUEUED]
        try:
            self.enqueue(jobs)
        except Exception:  # the sweeper re-enqueues queued jobs with no live message
            log.exception("re-enqueue of released jobs failed; the sweeper will pick them up")
