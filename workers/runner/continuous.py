"""Continuous batching (issue 25, items 2-3; `UNIPIC_WORKER_BATCHING=continuous`): every job runs in a running set,
one per compatibility class (kind and size), that admits, pauses and retires jobs between two steps: a sampling step
for generate and edit (`model.engine.running_set`), a token for understand (`model.engine.decode_set`). Engines
without `open_set` run whole-batch as before.

Each pass of the loop: drop what must leave (cancel requested, lease lost, the job's own time limit, a shutdown
that cannot wait for it; a direct worker with Redis reads cancel requests when it hears one asked for,
`workers.runner.wakeups.CancelHints`, else about once a step, off the sampling thread; a dropped item's row is
claimed at once, so the next queued job takes it at the next step; a gateway worker claims a canceled item's row
as soon as its watcher learns of the cancel, mid-step, `_cancel_heard`) -> ask the store for more work of the queue
the message woke (`claim_for_message`: the one scheduling policy, over the direct store and the gateway alike) up
to the free rows and pixels of the card's budget (`UNIPIC_WORKER_MAX_BATCH`, `UNIPIC_WORKER_BATCH_PIXEL_BUDGET`),
so a job queued now starts at the next step; a full set asks only for a key it holds nothing of, one job over the
cap (`_claim_newcomer`; or for a job of a key it holds above every priority it holds of that key: a key's
interactive job beside its own bulk). The rows a step will free (its items at their last step) are claimed while
it samples, on the runner's look thread, with their records and inputs read there too, and admitted before the
next step (`_claim_ahead`, `UNIPIC_WORKER_CLAIM_AHEAD`), so the device does not wait for a claim's round trip or
an input's download. A job heard arriving (a wake-up) while a model call runs is claimed at once on a look thread,
into the rows free when the call began or as a full set's newcomer (`_wake_heard`), and admitted at the next pass;
between calls, or for free rows while a claim ahead is in flight (it asks for them), the next pass claims it on
the sampling thread; a newcomer is claimed beside a claim ahead. With Redis,
the worker hears its queues' wake-ups (`workers.runner.wakeups`), so once a claim found the queue empty the loop
asks again only when a job arrived (or every NEWCOMER_SAFETY_SECONDS, and always before it ends): a claim query
costs about as much as a small step on a busy CPU. A gateway worker hears no wake-ups: while its set samples, it
claims by long-polling the gateway on a look thread (`ContinuousRunner.look_aside`), for free rows and, beside
that, for a key its sets hold nothing of (so a newcomer's long wait never keeps freed rows empty), and the set takes
what a look found at the next pass; looks in flight when the loop ends are the worker's next claim (`left_claims`).
The loop holds the worker's one message for as long as its queue has work, so once that queue has fed it more than
its first claim (a backlog loop; a loop that ends soon leaves the other queues to their own messages) it also
asks a direct worker's other queues, in turn, when a row is free (a gateway worker's claims span its queues
already): while they have work, they and the loop's own queue take turns at free rows, and once they have none, it
looks again only every `LOOK_ELSEWHERE_SECONDS`; a job whose wake-up it hears there is claimed at once
(`_claim_woken_elsewhere`). So one queue's backlog never starves another queue's jobs on a continuous worker. Jobs
of another kind or size open their own set -> one step of the set `step_policy.SetShares` picks (the least-served
key's, sets of one key sharing the device by time), advancing the items `step_policy.choose` picks (the others
pause with their state kept) -> images that took their last step in a step of the bulk (every live item
advanced) leave the set undecoded, their rows free, and each VAE decode is then a pass of its own, ranked with
the steps by key (`_next_work`): a job heard arriving is claimed and takes its steps between two decodes of a
wave instead of after all of them (eight 64 px images: 115-135 ms of decodes in a 125-145 ms last step on the
CPU); a step that ran the policy's choice ahead of paused items decodes what it finished at once -> retired
items are encoded, uploaded and completed in the background by `BatchRunner._succeed`, the same finishing path
as whole batches, while sampling goes on. Leases of every live item are renewed by one keeper;
progress is each item's own step count. A step that runs out of memory changes no item (`RunningSet.step`): the
most recently admitted half goes back to the queue and the set stays smaller for the rest of the loop; a single
item that cannot fit fails `out_of_memory`. Any other step error is retried item by item and fails only the
items that raise it. A device-fatal error releases every live item and ends the worker, as in whole mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, TypeVar

from model.engine.decode_set import TextFinished
from model.engine.requests import ImageResult, TextResult
from model.engine.running_set import Finished
from storage.jobs.params import progress_total
from storage.records import Claim, JobRecord
from storage.routing import gpu_queues, model_of_queue
from storage.settings import Settings
from storage.states import JobErrorCode, JobStatus
from workers.device.health import DeviceFatal
from workers.runner.batching import BatchRunner, Item
from workers.runner.engine import ModelResult
from workers.runner.leases import LeaseKeeper
from workers.runner.limits import BatchClock, hard_limit_seconds, soft_limit_seconds
from workers.runner.loop_records import (
    ELSEWHERE,
    NEWCOMER,
    OWN,
    OWN_AFTER_ELSEWHERE,
    ClaimView,
    Decode,
    Found,
    Look,
    Member,
)
from workers.runner.oom import failure_code, is_oom, release_cached_memory
from workers.runner.progress import MAX_CANCEL_POLL_SECONDS, BackgroundCancelWatcher, ProgressReporter
from workers.runner.step_policy import STARVE_AFTER, SetShares, StepCosts, choose
from workers.runner.wakeups import Owners, QueueWakeups
from workers.transport.base import QueueClaims

log = logging.getLogger(__name__)

LOOK_ELSEWHERE_SECONDS = 1.0  # how often a loop with a free row asks the worker's other queues first
ADMIT_EVERY_SECONDS = 0.1  # a set with live items and no wake-up heard claims its own queue at most this often:
# one claim per step costs as much as a small step on a busy CPU (a woken one claims at once: a job arrived)
CANCEL_POLL_SECONDS = 0.1  # cancel requests are read off the sampling thread, this often until a step paced it
NEWCOMER_SECONDS = 0.25  # a full set without queue wake-ups asks this often for a key it does not hold
NEWCOMER_SAFETY_SECONDS = 2.0  # with wake-ups, it asks this often anyway (a wake-up can be lost)
REMOTE_LOOK_SECONDS = 3.0  # a gateway worker's claim while sampling long-polls this long (on wake-ups, at the API)
T = TypeVar("T")


class ContinuousRunner(BatchRunner):
    """`BatchRunner` whose image jobs run in running sets; everything else is the whole-batch path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_costs: dict[tuple[str, int], StepCosts] = {}  # per (kind, size): outlives one loop
        self._wakeups: QueueWakeups | None = None
        self._looks: ThreadPoolExecutor | None = None  # claims while sampling, off the sampling thread
        self._looks_lock = threading.Lock()
        # a gateway loop's looks in flight when it ended (OWN: for rows, NEWCOMER: for a key it held nothing of):
        # the worker's next claim, and what that claim does not wait for the next loop adopts
        self.left_looks: list[tuple[str, Look]] = []
        self._heard_before_claim: dict[str, int] = {}  # queue wake-ups heard before a message's claim

    def look_aside(self, claim: Callable[[], Found]) -> Future[Found | None]:
        """A claim while a set samples (`_Loop`: the rows a step frees, free rows, a gateway worker's newcomer),
        on this runner's look threads, so the sampling thread waits for no round trip: a plain claim on the
        direct transport, a long-poll of up to REMOTE_LOOK_SECONDS over the gateway (which costs the gateway
        nothing between wake-ups). Three threads: a gateway worker's newcomer long-poll waits for another key's
        job while the claim of the rows a step frees goes on beside it, and so does the claim of rows a cancel
        heard mid-step frees (`_Loop._cancel_heard`). None when the claim failed."""
        with self._looks_lock:  # a cancel poll's thread asks too
            if self._looks is None:
                self._looks = ThreadPoolExecutor(max_workers=3, thread_name_prefix="claim-look")
            looks = self._looks

        def look() -> Found | None:
            try:
                return claim()
            except Exception as exc:  # noqa: BLE001 - the next look asks again; the set goes on meanwhile
                log.warning("a claim while sampling failed: %s", exc)
                return None

        return looks.submit(look)

    def left_claims(self) -> list[Claim]:
        """What the looks a gateway loop left in flight took, as soon as one of them took a job (waiting at most
        REMOTE_LOOK_SECONDS, less when a job arrives): the worker takes it as its next claim, so a look never
        takes a job from that claim; a look still waiting is adopted by the loop that runs it (`_Loop`)."""
        left, claims, asked = self.left_looks, list[Claim](), list[float]()
        while left and not claims:
            wait([look.future for _, look in left], return_when=FIRST_COMPLETED)
            for _, look in left:
                found = look.future.result() if look.future.done() else None
                if found is not None and found.claims:
                    claims += found.claims
                    asked.append(look.asked_at)
            left = [(kind, look) for kind, look in left if not look.future.done()]
        self.left_looks = left
        self.left_asked_at = min(asked, default=None)
        return claims

    def drain(self) -> None:
        """Also wait for a remote look still in flight (at most REMOTE_LOOK_SECONDS): what it took goes back to
        the queue before the worker exits, not when its lease runs out."""
        super().drain()
        with self._looks_lock:
            looks, self._looks = self._looks, None
        if looks is not None:
            looks.shutdown(wait=True)
        left = self.left_claims()  # every look is done: what all of them took
        if left:
            self._release(left)

    @property
    def wakeups(self) -> QueueWakeups | None:
        """The process's queue wake-ups (direct transport with Redis), subscribed at the first loop."""
        if self._wakeups is None and self._hears_redis:
            self._wakeups = QueueWakeups(self.settings.redis_url).start()
        return self._wakeups

    @property
    def _hears_redis(self) -> bool:
        """The store is the database (a gateway worker hears nothing) and Redis carries its messages."""
        return bool(self.settings.redis_url) and isinstance(self.store, QueueClaims)

    def _claim(self, job_id: str) -> list[Claim]:
        wakeups = self.wakeups
        self._heard_before_claim = wakeups.counts() if wakeups is not None else {}
        return super()._claim(job_id)

    def run_claims(self, claims: list[Claim], started: float | None = None) -> int:
        jobs = self.store.get_many([c.job_id for c in claims])
        if not hasattr(self.engine, "open_set"):
            return super().run_claims(claims, started)
        heard, self._heard_before_claim = self._heard_before_claim, {}
        if self.wakeups is not None:  # the claim that took these saw the jobs those wake-ups announced
            self.wakeups.seen_by_claim(jobs[0].queue, heard)
        loop = _Loop(self, jobs[0])
        try:
            loop.run(claims, started)
        finally:
            self.batches_served += 1
            self.jobs_served += loop.claimed
        # the console's one line per finished batch (README): a running set is served as one batch
        log.info("batch of %d %s finished in %.2fs (running set)", loop.claimed, jobs[0].compat_key,
                 time.monotonic() - (loop.started if started is None else started))
        self.metrics.observe_gpu_memory(self.device)
        return loop.claimed


def _merged(owners: list[Owners | None]) -> Owners | None:
    """The keys of several wake-ups, each with its highest priority among them (None: one did not say)."""
    merged: Owners = {}
    for said in owners:
        if said is None:
            return None
        for owner, priority in said.items():
            merged[owner] = max(priority, merged.get(owner, priority))
    return merged


class _Loop:
    """One woken queue served until no item is live and nothing more is claimable."""

    def __init__(self, runner: ContinuousRunner, seed: JobRecord) -> None:
        s = runner.settings
        self.r, self.s, self.seed, self.queue = runner, s, seed.id, seed.queue
        self.started = time.monotonic()
        self.look_elsewhere_at = self.started  # a backlog loop's first free row already asks the other queues
        self.newcomer_at = self.started
        self.look: Look | None = None  # a claim of rows in flight off the sampling thread
        self.newcomer_look: Look | None = None  # a gateway worker's long-poll for a key its sets hold nothing of
        # a gateway worker's claim of the rows of jobs found canceled mid-step (`_cancel_heard`, off this thread)
        self.cancel_look: Look | None = None
        # a direct worker's claim of a job heard arriving, made while a model call runs (`_wake_heard`)
        self.heard_look: Look | None = None
        self.woken_owners: Owners | None = None  # the keys of the wake-ups the last pass took (None: not said)
        self.view: ClaimView | None = None  # what `heard_look` may claim; None but while a model call runs
        # other threads (the watcher's, the wake-ups') set cancel_look and heard_look, the sampling thread takes them
        self.cancel_lock = threading.Lock()
        self.closed = False  # (under cancel_lock) the loop ends: no more cancel or heard looks
        for kind, left in runner.left_looks:  # the last loop's, still waiting: what they take joins this loop
            if kind == NEWCOMER:
                self.newcomer_look = Look(left.future, 0, 0, left.asked_at)
            elif self.look is None:  # it holds no rows here: what does not fit goes back when it is collected
                self.look = Look(left.future, 0, 0, left.asked_at)
            else:
                self.cancel_look = Look(left.future, 0, 0, left.asked_at)
        runner.left_looks = []
        self.wakeups = runner.wakeups
        self.looks = 0
        self.own_turn = False
        self.dropped = False  # items left between steps (`_drop_leaving`): their rows are claimed at once
        self.fed = False  # the loop's own queue had more than the set held: a backlog loop (see _claim_more)
        # the keys of wake-ups taken while the set held its newcomer, one over the cap (None: not said), answered
        # once it is back at the cap
        self.owed: list[Owners | None] = []
        self.drained = False  # its last claim found nothing: with wake-ups, ask again only when one comes
        self.recheck_at = self.started  # or at this time (a wake-up can be lost)
        self.claimed_at = self.started - ADMIT_EVERY_SECONDS  # the last claim of the own queue
        # the queues a direct worker subscribes to, but the loop's own
        self.other_queues = [q for q in gpu_queues(s.worker_kinds, s.worker_max_pixels, model_of_queue(self.queue))
                             if q != self.queue]
        self.ahead = s.worker_claim_ahead  # claims while a step samples (`_claim_ahead`), off the sampling thread
        # a direct worker with Redis claims a job heard arriving while a model call runs (`_wake_heard`)
        self.hears = self.wakeups is not None and self.direct and self.ahead
        self.sets: dict[tuple[str, int], Any] = {}  # (kind, size) -> RunningSet or DecodeSet (model.engine)
        self.shares = SetShares()  # which set steps next
        self.members: dict[str, Member] = {}
        self.decoding: list[Decode] = []  # in the order their last steps ended
        self.served: dict[tuple[str, int], dict[str, float]] = {}  # per set: owner -> megapixel-steps done
        self.claims: dict[str, Claim] = {}
        self.totals: dict[str, int] = {}
        self.admitted = 0
        self.claimed = 0
        self.row_cap = s.worker_max_batch  # lowered by out of memory for the rest of this loop
        self.step_started: float | None = None
        self.last_step_at: float | None = None  # when the last step began (cancel checks cover it)
        self.last_step_tokens = False  # it was a decode set's: one token
        self.finishing: list[Future[None]] = []
        self.released: list[Claim] = []
        self.keeper = LeaseKeeper(runner.store, [], s.lease_seconds, stop_renewing=self._hung)
        self.reporter = ProgressReporter(runner.store, self.claims, s.progress_interval_ms / 1000, None, self.totals)
        # read off the sampling thread: when a cancel is heard (direct, with Redis), else about once a step
        self.watcher = BackgroundCancelWatcher(runner.store, CANCEL_POLL_SECONDS, runner.cancel_hints,
                                               on_requested=None if self.direct else self._cancel_heard)

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self, claims: list[Claim], asked_at: float | None = None) -> None:
        """Serve the loop from its first `claims` (asked at `asked_at`, monotonic; None: not known)."""
        self.keeper.__enter__()
        if self.hears:
            self.wakeups.listen(self.queue, self._wake_heard)  # type: ignore[union-attr]
        try:
            with self.reporter, self.watcher:
                self.fed = len(claims) >= self.row_cap
                self._admit(claims, asked_at)
                while True:
                    self._drop_leaving()
                    self._claim_more()  # also when the last step emptied the set: its rows are free now
                    if not self.busy:
                        break
                    work = self._next_work()
                    self._open_view()
                    try:
                        if isinstance(work, Decode):
                            self._decode(work)
                            continue
                        self._step(work)
                    finally:
                        self._close_view()
                    self._guarded(self.r.faults.on_step, max(1, len(self.members)))  # a lost device is fatal
        except DeviceFatal:  # the device broke: every live item goes back (attempts unchanged); we exit
            self._wait_finishing()
            self.r._release([m.claim for m in self._live()] + self.released)
            self.released = []
            raise
        except Exception:  # the store or the network failed past its retries: hand back what is live, if we can
            log.exception("continuous loop failed; handing its live jobs back")
            self._wait_finishing()
            self.r._release([m.claim for m in self._live()] + self.released)
            self.released = []
            raise
        finally:
            if self.hears:
                self.wakeups.listen(self.queue, None)  # type: ignore[union-attr]
            self._abandon_look()
            self._wait_finishing()
            self.keeper.__exit__(None, None, None)
        if self.released:
            self.r._release(self.released)

    @property
    def busy(self) -> bool:
        """Items live in a set or waiting for their decode."""
        return bool(self.members or self.decoding)

    def _live(self) -> list[Member]:
        """Every job this loop holds a lease of and has not settled: in a set or waiting for its decode."""
        return [*self.members.values(), *(d.member for d in self.decoding)]

    def _hung(self) -> bool:
        """A model call running past the hard limit of every live item: stop renewing, let the sweeper reclaim."""
        started, live = self.step_started, self._live()
        if started is None or not live:
            return False
        return time.monotonic() - started > max(m.clock.hard_seconds for m in live)

    def _guarded(self, call: Callable[[], T], items: int) -> T:
        guard = getattr(self.r.engine, "guard", None)  # workers.device.health.GuardedEngine
        return guard(call, items) if guard is not None else call()

    # ---- admission ------------------------------------------------------------------------------------------
    def _free(self) -> tuple[int, int]:
        """Rows and pixels of the card's budget no live item holds and no claim in flight may fill (a cancel
        look's rows are held for it once the canceled items left them)."""
        look, cancel, heard = self.look, self.cancel_look, self.heard_look
        rows = self.row_cap - len(self.members) - sum(x.rows for x in (look, heard) if x is not None)
        pixels = self.s.worker_batch_pixel_budget - sum(m.item.job.pixels for m in self.members.values())
        pixels -= sum(x.pixels for x in (look, heard) if x is not None)
        if cancel is not None:
            left = [px for job_id, px in cancel.frees.items() if job_id not in self.members]
            rows, pixels = rows - len(left), pixels - sum(left)
        return rows, pixels

    @property
    def direct(self) -> bool:
        """The store is the database (it hears queue wake-ups), not the HTTPS gateway."""
        return isinstance(self.r.store, QueueClaims)

    def _claim_more(self) -> None:
        if self.r.shutdown.requested:
            return
        woken = self._take_woken()
        if self.owed and len(self.members) <= self.row_cap:  # the newcomer it waited for left: their turn now
            owed = [*self.owed, self.woken_owners] if woken else self.owed
            woken, self.owed, self.woken_owners = True, [], _merged(owed)
        # a job heard arriving while a claim ahead is in flight: that claim (a direct one is one query) may be the
        # one taking it, or it holds the rows the job needs; either way it is waited for, so the job is admitted
        # at this pass, before the next step or decode, not one pass later
        self._collect_look(wait=not self.busy or bool(woken))
        self._collect_newcomer()
        self._claim_woken_elsewhere()
        if woken:
            self.drained = False
        # rows a cancel (or a lost lease, a time limit) freed were not claimed ahead: claimed now, so the next
        # queued job takes the row at the next step, not one step later (a drop is rare; a claim is one query)
        urgent, self.dropped = woken or self.dropped, False
        rows, pixels = self._free()
        if rows <= 0 or pixels <= 0:  # a wake-up of only keys held at that priority has no newcomer for us
            if not woken and self.look is not None and self.look.rows > 0:
                return  # a claim of free rows is in flight: it takes any key's job, a newcomer's too
            if woken and len(self.members) > self.row_cap:
                # the set holds a newcomer (one over the cap): this wake-up is answered once it leaves, when its
                # keys may no longer be held (the newcomer's own key's next job, often: tenant B's next job then
                # waited for the wake-up of the one after it, `bench.fairness`)
                self.owed.append(self.woken_owners)
                return
            self._claim_newcomer(False if woken and self._holds_all(self.woken_owners) else woken)
            return
        now = time.monotonic()
        if self.drained and woken is False and self.busy and now < self.recheck_at:
            return  # the queue was empty and no job arrived since (wake-ups): no claim query this step
        if self.busy and not urgent and now < self.claimed_at + ADMIT_EVERY_SECONDS:
            return  # polling (no wake-ups heard): at most this often; a job heard arriving is claimed at once
        if self.busy and (not self.direct or (self.ahead and not urgent)):  # the gateway, or nothing new heard
            if self.look is None:  # the claim goes off the sampling thread; the next pass admits what it found
                self._look(rows, pixels)
            return
        for _ in range(2):  # a job heard arriving (or a dropped item's row) is claimed now; nothing live: no overlap
            found = self._ask(rows, pixels, self._elsewhere_first(), wait_seconds=0.0)()
            self._took(found, now)
            if self.members or found.where != ELSEWHERE:
                return
            rows, pixels = self._free()  # all it claimed elsewhere failed at admission: the own queue's turn now

    def _claim_ahead(self, ending: list[str]) -> None:
        """The rows the coming step frees (its items at their last step) are claimed while it samples, off the
        sampling thread, and admitted before the next step: a claim costs a round trip to Postgres (10-15 ms on
        a busy CPU, a step of a small image) or to the gateway, which the device spent idle when the claim came
        after the step (issue 25: the model-busy fraction under backlog). What it claims starts at the next step.
        Not when the queue was found empty and no job arrived since, if the worker hears wake-ups: the next pass
        claims a heard one at once.
        Measured on the 2-core CPU with the tiny model (`bench.pipeline`): model busy 0.77 -> 0.93 at 128 px,
        0.90 -> 0.97 at 256 px; images/s fell up to 7 % at 128 px and 2 steps (steps of tens of ms share the
        cores with the claim) and rose up to 24 % for 256 px edits. A real-size step is far longer than a claim."""
        if not self.ahead or self.look is not None or self.r.shutdown.requested:
            return
        if not ending or (self.drained and self.wakeups is not None):
            return
        rows, pixels = self._free()
        rows, pixels = rows + len(ending), pixels + sum(self.members[i].item.job.pixels for i in ending)
        if rows > 0 and pixels > 0:
            self._look(rows, pixels)

    def _open_view(self) -> None:
        """(before a model call) What a job heard arriving during it may be claimed into (`_wake_heard`); nothing
        for a loop that hears no wake-ups (a gateway worker, no Redis, claims ahead off)."""
        if not self.hears:
            return
        rows, pixels = self._free()
        with self.cancel_lock:
            self.view = ClaimView(rows, pixels, self._held_owners(), len(self.members) > self.row_cap)

    def _held_owners(self) -> dict[str, int]:
        """The keys of the jobs this loop holds, each with the highest priority held of it: what a direct
        newcomer claim passes over (`claim_newcomer`'s rule), read from the loop instead of asked of the store
        (one query less, on the sampling thread at that). Items waiting for their decode count: while a wave of
        the bulk is decoded its rows are free and the claim ahead is taking the next wave, and a newcomer claim
        that did not pass over the bulk's key took one of its jobs whenever that claim's charge was not yet
        committed (`bench.fairness`, 300 jobs of tenant B: B's job then waited for the next wave, 0.3 s against
        0.1 s alone). A member whose lease was lost counts until the pass that drops it: its key's jobs wait that
        pass out like any held key's."""
        owners: dict[str, int] = {}
        for m in self._live():
            job = m.item.job
            owners[job.owner_id] = max(owners.get(job.owner_id, job.priority), job.priority)
        return owners

    def _holds_all(self, owners: Owners | None, held: dict[str, int] | None = None) -> bool:
        """Whether the loop holds every key of a wake-up (`owners`, None: not said) at its priority there or
        above (`held`: the keys held, else read now): a newcomer claim for it could only find nothing."""
        if owners is None:
            return False
        held = self._held_owners() if held is None else held
        return all(owner in held and priority <= held[owner] for owner, priority in owners.items())

    def _close_view(self) -> None:
        """(after the call) The sampling thread changes the members now: no claim off it until the next call; one
        started before this is in `heard_look`, so the pass that takes its wake-up collects it (`_take_woken`)."""
        if not self.hears:
            return
        with self.cancel_lock:
            self.view = None

    def _wake_heard(self, count: int, owners: Owners | None) -> None:
        """(the wake-ups thread, at the loop's queue's `count`-th wake-up) The job that arrived is claimed now, off
        the sampling thread while a model call runs, into the rows free when the call began, or when there are
        none, as a newcomer one row over the cap (`_claim_newcomer`'s rule, the keys held read from the view, not
        the store; none when the wake-up's `owners` are all held at their priority there: it could only find
        nothing); the next pass admits it without waiting. A claim made there, on the sampling thread, kept the
        device idle for its round trip at every arrival: at ten arrivals a second on the 2-core CPU, 67 claims of
        10-15 ms each, 4 % of the model's time (`bench.worker --model-busy`, 256 px). Not between calls (the
        sampling thread claims then), nor for free rows while a claim ahead is in flight (it asks for them and may
        be taking the job: that pass waits for it); a newcomer's claim goes on beside one (it takes one row over
        the cap, not the rows the claim ahead fills; whichever of the two gets the job, the pass collects the
        claim ahead first, `_collect_heard`)."""
        store, lease, worker = self.r.store, self.s.lease_seconds, self.r.worker_id
        if not isinstance(store, QueueClaims):
            return
        with self.cancel_lock:
            view = self.view
            if view is None or self.closed or self.heard_look is not None:
                return
            if self.r.shutdown.requested or (view.over_cap and view.rows <= 0):
                return
            if self.look is not None and view.rows > 0 and view.pixels > 0:
                return
            if (view.rows <= 0 or view.pixels <= 0) and self._holds_all(owners, view.owners):
                return
            queue, objects = self.queue, self.r.objects
            rows, pixels = (view.rows, view.pixels) if view.rows > 0 and view.pixels > 0 else (0, 0)

            def claim() -> Found:
                if rows:
                    return Found.of(store, objects, OWN, store.claim_next(queue, worker, lease, rows, pixels))
                return Found.of(store, objects, NEWCOMER, self._newcomer_of(store, queue, view.owners))

            self.heard_look = Look(self.r.look_aside(claim), rows, pixels, time.monotonic(), heard=count)

    def _take_woken(self) -> bool | None:
        """Whether the loop's queue was woken since the last pass (None: not known, no wake-ups), less the
        wake-ups a heard look answered (`_wake_heard`): that look is collected here (waited for: one query, begun
        during the model call) and its jobs admitted. A look is set before the wake-up it answers can be taken
        (both under the wake-ups' lock), so a wake-up taken while no look is in flight was not claimed yet."""
        wakeups = self.wakeups
        if wakeups is None:
            return None
        woken: bool | None = None
        for _ in range(3):  # another look may begin while one is collected: it answers what arrived meanwhile
            with self.cancel_lock:
                heard, self.heard_look = self.heard_look, None
            if heard is not None and self._collect_heard(heard):
                wakeups.seen_by_claim(self.queue, {self.queue: heard.heard})
            woken, self.woken_owners = wakeups.take_owners(self.queue)
            if not woken or self.heard_look is None:
                break
        return woken

    def _collect_heard(self, look: Look) -> bool:
        """Admit what a heard look took; False when its claim failed (the wake-up is then still to answer)."""
        found = look.future.result()
        if found is None or found.where != NEWCOMER:
            self._collected(look)
            return found is not None
        if self.look is not None:  # a claim ahead began before it: admitted first, into the rows it was for (the
            self._collect_look(wait=True)  # newcomer takes one over the cap); it may be the one that got the job
        # a newcomer claim answers for the keys it could take: a held key's job may be queued for a free row (also
        # when the claim ahead, asked before the wake-up, found the queue empty)
        self.drained = False
        self.newcomer_at = time.monotonic() + NEWCOMER_SAFETY_SECONDS
        if found.claims:
            self._admit(found, look.asked_at)
        return True

    def _elsewhere_first(self) -> bool:
        """Whether this claim of free rows asks the worker's other queues before its own: while they have work,
        they and the loop's own queue take turns (a backlog loop only, see `_claim_more`)."""
        if self.direct and self.fed and time.monotonic() >= self.look_elsewhere_at and not self.own_turn:
            self.own_turn = True
            self.looks += 1
            return True
        self.own_turn = False
        return False

    def _ask(self, rows: int, pixels: int, elsewhere_first: bool, wait_seconds: float) -> Callable[[], Found]:
        """The store calls of one claim of free rows (any thread): the other queues first when it is their turn
        (each in turn, the first that has work; one read first tells which are worth a claim at all: the worker
        serves six queues or more, most of them idle, and each idle one's claim was four statements ahead of the
        loop's own), else or then the loop's own queue (for a gateway worker, every
        queue of its token, waiting up to `wait_seconds` for a job)."""
        runner, store, seed, worker, lease = self.r, self.r.store, self.seed, self.r.worker_id, self.s.lease_seconds
        kinds = list(self.s.worker_kinds)  # a gateway claim spans the worker's queues (a direct one: the seed's)
        others, turn = self.other_queues, self.looks

        def ask() -> Found:
            if elsewhere_first and isinstance(store, QueueClaims):
                worth = store.queues_worth_claiming(others)  # one read; an idle queue's claim is 4 statements
                for i in range(len(others)):
                    queue = others[(turn + i) % len(others)]
                    claims = store.claim_next(queue, worker, lease, rows, pixels) if queue in worth else []
                    if claims:
                        return Found.of(runner.store, runner.objects, ELSEWHERE, claims)
            claims = store.claim_for_message(seed, worker, lease, rows, pixels, kinds=kinds,
                                             wait_seconds=wait_seconds)
            return Found.of(runner.store, runner.objects, OWN_AFTER_ELSEWHERE if elsewhere_first else OWN, claims)

        return ask

    def _look(self, rows: int, pixels: int) -> None:
        """A claim of free rows off the sampling thread: for a gateway worker a long-poll of up to
        REMOTE_LOOK_SECONDS (it hears no wake-ups), for a direct one a plain claim. Its rows and pixels are held
        for it until it is collected (`_free`)."""
        wait_seconds = 0.0 if self.direct else REMOTE_LOOK_SECONDS
        self.look = Look(self.r.look_aside(self._ask(rows, pixels, self._elsewhere_first(), wait_seconds)),
                         rows, pixels, time.monotonic())

    def _took(self, found: Found, asked_at: float) -> None:
        """Admit what a claim of free rows found and remember what it says about the queues."""
        where, claims = found.where, found.claims
        if where == ELSEWHERE:
            self.own_turn = True  # the own queue's turn next
        else:
            self.own_turn = False
            if where == OWN_AFTER_ELSEWHERE:
                self.look_elsewhere_at = asked_at + LOOK_ELSEWHERE_SECONDS  # nothing there: look later
            self.drained = not claims
            self.recheck_at = asked_at + NEWCOMER_SAFETY_SECONDS
            self.claimed_at = asked_at
        if claims:
            self.fed = True
            self._admit(found, asked_at)

    def _claim_newcomer(self, woken: bool | None) -> None:
        """A full set still takes one job of a key it holds none of (or of a key it holds, above every priority it
        holds of it: the key's interactive job beside its bulk), into one row over the cap: a step never runs
        more than the cap (`_step_rows`), so that job pauses someone else's item instead of waiting for a row
        to free (a whole wave of the bulk's items, often). The direct transport asks when the queue was woken
        since the last look (`workers.runner.wakeups`: a job arrived), else every NEWCOMER_SAFETY_SECONDS, or
        every NEWCOMER_SECONDS without Redis. A gateway worker hears no wake-ups and a round trip may cost more
        than a step: it long-polls the gateway off the sampling thread (`ContinuousRunner.look_aside`), as it
        does for free rows, for a job of any queue the token serves (one of another queue opens its own set),
        and the set takes what the look found at the next pass."""
        store, worker, lease, max_pixels = self.r.store, self.r.worker_id, self.s.lease_seconds, self.s.worker_max_pixels
        if (self.newcomer_look is not None and not self.direct) or len(self.members) > self.row_cap:
            return
        now = time.monotonic()
        if not woken and now < self.newcomer_at:
            return
        if not isinstance(store, QueueClaims):  # the gateway reads the held jobs' keys; the look spans its queues
            held = [m.id for m in self._live()]  # with the items waiting for their decode (`_held_owners`)

            def look() -> Found:
                return Found.of(store, self.r.objects, NEWCOMER, store.claim_newcomer(
                    None, worker, lease, max_pixels, held, wait_seconds=REMOTE_LOOK_SECONDS))

            self.newcomer_look = Look(self.r.look_aside(look), 0, 0, now)
            return
        self.newcomer_at = now + (NEWCOMER_SECONDS if woken is None else NEWCOMER_SAFETY_SECONDS)
        claims = self._newcomer_of(store, self.queue, self._held_owners())
        if claims:
            self._admit(claims, now)

    def _newcomer_of(self, store: QueueClaims, queue: str, held: dict[str, int]) -> list[Claim]:
        """A direct worker's newcomer claim (any thread): one job of `queue` of a key not in `held` (the keys held,
        with their highest priority), or above that priority, into one row over the cap."""
        return store.claim_next(queue, self.r.worker_id, self.s.lease_seconds, 1, self.s.worker_max_pixels,
                                above=held)

    def _cancel_heard(self, job_ids: set[str]) -> None:
        """(the thread that learned it, mid-step: a cancel poll's or the watcher's read) A gateway worker found
        jobs of this loop canceled: the rows they will free are claimed now, off the sampling thread, so the next
        queued job takes one at the very next step. The loop drops them at its next pass (`_drop_leaving`), and a
        claim begun only then (a round trip over the gateway) would be admitted a step later; a direct worker
        claims at that pass instead (`dropped`: one query)."""
        with self.cancel_lock:
            if self.closed or self.cancel_look is not None or self.r.shutdown.requested:
                return  # one at a time: a second cancel's rows are claimed at the drop, as before
            freed = {m.id: m.item.job.pixels for m in map(self.members.get, job_ids) if m is not None}
            if freed:
                rows, pixels = len(freed), sum(freed.values())
                ask = self._ask(rows, pixels, elsewhere_first=False, wait_seconds=0.0)
                self.cancel_look = Look(self.r.look_aside(ask), rows, pixels, time.monotonic(), frees=freed)

    def _collect_look(self, wait: bool = False) -> None:
        """Admit what finished looks found (with `wait`, a direct worker's look is waited for: nothing is live
        to step meanwhile, or a job was heard arriving); a cancel look's first, the rows it was for are free now."""
        with self.cancel_lock:
            cancel = self.cancel_look
            if cancel is not None and cancel.future.done():
                self.cancel_look = None
            else:
                cancel = None
        if cancel is not None:
            self._collected(cancel)
        look = self.look
        if look is None or not (look.future.done() or (wait and self.direct)):
            return
        self.look = None
        self._collected(look)

    def _collected(self, look: Look) -> None:
        """Admit what a look found; after a failed one, the next claim waits a little. A look may have found
        more than the rows free now (a step that raised retired nothing; a heard newcomer took a row meanwhile):
        the rest go back to the queue at once, in the policy's order (the last found go first)."""
        found = look.future.result()
        if found is None:
            self.newcomer_at = self.claimed_at = time.monotonic() + NEWCOMER_SAFETY_SECONDS
            return
        rows, pixels = self._free()
        keep = 0
        for c in found.claims:  # in the policy's order: the first ones fit
            rows, pixels = rows - 1, pixels - found.jobs[c.job_id].pixels
            if rows < 0 or pixels < 0:
                break
            keep += 1
        if keep < len(found.claims):
            log.info("a claim while sampling found %d jobs for %d free rows: the rest go back",
                     len(found.claims), keep)
            self.r._release(found.claims[keep:])
        self._took(replace(found, claims=found.claims[:keep]), look.asked_at)
        self.drained = self.drained and keep == len(found.claims)  # what went back is queued: not drained

    def _collect_newcomer(self) -> None:
        """Admit what a gateway worker's finished newcomer long-poll found: a job of a key the sets held nothing
        of when it asked, into one row over the cap. After a failed one, the next waits a little."""
        look = self.newcomer_look
        if look is None or not look.future.done():
            return
        self.newcomer_look = None
        found = look.future.result()
        if found is None:
            self.newcomer_at = time.monotonic() + NEWCOMER_SAFETY_SECONDS
        elif found.claims:
            self._admit(found, look.asked_at)

    def _abandon_look(self) -> None:
        """The loop ends with looks in flight. A gateway worker's are its next claim (`left_claims`); a direct
        one's (a short query) is waited for and what it took goes back to the queue at once."""
        with self.cancel_lock:
            self.closed = True
            cancel, self.cancel_look = self.cancel_look, None
            heard, self.heard_look = self.heard_look, None
        look, self.look = self.look, None
        newcomer, self.newcomer_look = self.newcomer_look, None
        if not self.direct:
            self.r.left_looks = [(kind, held) for kind, held in ((OWN, look), (NEWCOMER, newcomer), (OWN, cancel))
                                 if held is not None]
            return
        for direct in (look, heard):
            found = direct.future.result() if direct is not None else None
            if found is not None and found.claims:
                self.r._release(found.claims)

    def _claim_woken_elsewhere(self) -> None:
        """A job that arrived in another queue of this worker (its wake-up heard) is claimed at once, not at the
        loop's next look elsewhere (a free row, every LOOK_ELSEWHERE_SECONDS): into free rows, or when the sets
        are full, one job of a key they hold nothing of, one row over the cap (as `_claim_newcomer`: a step runs
        one set, never more than the cap). It opens its own set, and `SetShares` lets a less-served key's set
        go first, so a question asked during an image bulk is answered at about its own speed."""
        store, s, wakeups = self.r.store, self.s, self.wakeups
        if wakeups is None or not isinstance(store, QueueClaims):
            return
        for queue in self.other_queues:
            if len(self.members) > self.row_cap:
                continue
            woken, owners = wakeups.take_owners(queue)
            if not woken:
                continue
            rows, pixels, asked_at = *self._free(), time.monotonic()
            if rows > 0 and pixels > 0:
                claims = store.claim_next(queue, self.r.worker_id, s.lease_seconds, rows, pixels)
            elif self._holds_all(owners):
                continue  # a wake-up of only keys held at that priority: no newcomer for us there
            else:
                claims = self._newcomer_of(store, queue, self._held_owners())
            if claims:
                self._admit(claims, asked_at)

    def _admit(self, found: Found | list[Claim], asked_at: float | None = None) -> None:
        """Claims into the sets: a `Found` carries their records and requests, read with the claim; `asked_at`
        is when the claim was asked (its jobs' cancel requests were cleared after it: `BackgroundCancelWatcher`)."""
        if not isinstance(found, Found):
            found = Found.of(self.r.store, self.r.objects, OWN, found)
        claims, jobs = found.claims, found.jobs
        for c in claims:  # claimed again while an earlier lease of it is live here (released under us): that run
            old = self.members.pop(c.job_id, None)  # ends without writing; the new lease starts it over
            self._forget_decode(c.job_id)
            if old is not None:
                log.warning("job %s: claimed again under a new lease; its earlier run is dropped", c.job_id)
                self.sets[old.key].drop([old.id])
                if not self.sets[old.key].items:
                    self._close(old.key)
        self.claimed += len(claims)
        self.claims.update({c.job_id: c for c in claims})
        self.keeper.add(claims)
        self.watcher.watch([c.job_id for c in claims], asked_at)
        self.r._observe_claimed(jobs[c.job_id] for c in claims)
        for claim in claims:
            item = self.r._prepare(claim, jobs[claim.job_id], found.requests.get(claim.job_id))
            if item is None:  # invalid input: already failed
                self._let_go(claim.job_id)
            else:
                self._admit_item(item)

    def _admit_item(self, item: Item) -> None:
        job, s = item.job, self.s
        key = (job.kind, int(item.request.size))
        rs = self.sets.get(key)
        if rs is None:
            rs = self.sets[key] = self.r.engine.open_set(*key)  # type: ignore[attr-defined]
            self.shares.opened(key)
            self.served.setdefault(key, {})
        started = time.perf_counter()
        try:
            self._guarded(lambda: rs.admit([item.request]), 1)
        except DeviceFatal:
            self.released.append(item.claim)
            raise
        except Exception as exc:  # noqa: BLE001 - this item's conditioning failed; the set goes on
            self._let_go(job.id)
            if not rs.items:  # it was to open the set: nothing to step
                self._close(key)
            if is_oom(exc) and self.members:
                release_cached_memory()
                self.row_cap = max(1, min(self.row_cap, len(self.members)))  # never up: a newcomer may be over it
                self.r._release([item.claim])
            else:
                code = failure_code(exc)
                self.r._fail(item.claim, code, str(exc) or type(exc).__name__)
            return
        finally:
            self.r.metrics.observe_model_call(time.perf_counter() - started)  # its prompt's prefill
        soft = soft_limit_seconds([(job.kind, job.params)], s.time_limit_floor_seconds,
                                  s.time_limit_seconds_per_megapixel_step)
        self.totals[job.id] = progress_total(job.kind, job.params)
        self.admitted += 1
        self.members[job.id] = Member(item, key, BatchClock(soft, hard_limit_seconds(soft, s.lease_seconds)),
                                      self.admitted)

    # ---- leaving between steps ------------------------------------------------------------------------------
    def _drop_leaving(self) -> None:
        # a cancel requested before the last step began is seen now, read here if no background read began since
        # (an image leaves within one step); after a token, a background read begun in the last MAX_CANCEL_POLL
        # seconds will do (a question leaves within a few tokens), so a token costs no query on the sampling
        # thread (over the gateway, a round trip: B's 16-token question alone took 0.41 s with it, 0.20 s without)
        since = self.last_step_at
        if since is not None and self.last_step_tokens:
            since = min(since, time.monotonic() - MAX_CANCEL_POLL_SECONDS)
        requested = self.watcher(since)
        lost = self.keeper.lost()
        progress = self._progress()
        for m in self._live():
            if m.id in lost:
                log.warning("job %s: lease lost; dropped without writing", m.id)
            elif m.id in requested:
                self.r.store.cancel_running(m.claim)
                self.r.metrics.jobs.labels(JobStatus.CANCELED).inc()
            elif m.over_time():
                self.r._fail(m.claim, JobErrorCode.TIMEOUT,
                             f"job exceeded its time limit of {m.clock.soft_seconds:.0f}s")
            elif self.r.shutdown.should_abandon(m.clock.started, progress.get(m.id, 0.0)):
                self.released.append(m.claim)
            else:
                continue
            self._remove(m)
            self.dropped = True

    def _let_go(self, job_id: str) -> None:
        """This loop no longer renews the job's lease nor watches it for cancels (it ended or went back)."""
        self.keeper.finish(job_id)
        self.watcher.unwatch([job_id])

    def _remove(self, m: Member) -> None:
        self._let_go(m.id)
        if self.members.pop(m.id, None) is None:  # it was waiting for its decode
            self._forget_decode(m.id)
            return
        self.sets[m.key].drop([m.id])
        if not self.sets[m.key].items:
            self._close(m.key)

    def _close(self, key: tuple[str, int]) -> None:
        self.sets.pop(key, None)
        self.shares.closed(key)

    def _owners_of(self, key: tuple[str, int]) -> list[tuple[str, int]]:
        """(owner, priority) of each live item of the set `key` (`SetShares.next`)."""
        return [(self.members[i].item.job.owner_id, self.members[i].item.job.priority) for i in self.sets[key].ids]

    def _progress(self) -> dict[str, float]:
        out: dict[str, float] = {d.member.id: 1.0 for d in self.decoding}
        for rs in self.sets.values():
            out.update({i: done / total for i, (done, total) in rs.progress().items() if total})
        return out

    # ---- one step of one set --------------------------------------------------------------------------------
    def _step(self, key: tuple[str, int]) -> None:
        rs = self.sets.get(key)
        if rs is None:
            return
        live = [self.members[i] for i in rs.ids]
        costs = self.r.step_costs.setdefault(key, StepCosts())
        rows = self._step_rows(live)
        companions = self.s.worker_step_companions
        if companions == "auto":  # a CPU is compute-bound at real sizes: none there (see step_policy)
            companions = 0 if self.r.device == "cpu" else costs.companions(min(len(live), rows) - 1)
        phases = rs.progress()
        ids = choose([m.live(phases.get(m.id, (0, 0))) for m in live], self.served[key],
                     {m.id: m.paused for m in live}, companions, rows)
        ending = [i for i in ids if phases[i][0] + 1 >= phases[i][1]]  # items at their last step (or token limit)
        self._claim_ahead(ending)
        # a wave of the bulk leaves undecoded: each decode is then its own unit of work (`_next_work`); one image,
        # or a step that ran the policy's choice ahead of paused items, is decoded at once (a pass between costs a
        # finished job a cancel read, a round trip over the gateway)
        decode = len(ending) <= 1 or len(ids) < len(live)
        try:
            finished, seconds = self._run_step(rs, ids, decode)
        except DeviceFatal:
            raise
        except Exception as exc:  # noqa: BLE001 - classified: the worker survives anything but a broken device
            self._on_step_error(rs, ids, exc)
            return
        costs.observe(len(ids), seconds)
        self.watcher.pace(seconds)
        self.shares.stepped(key, [self.members[i].item.job.owner_id for i in ids], seconds)
        self._after_step(rs, live, ids, finished, seconds)

    def _step_rows(self, live: list[Member]) -> int:
        """The most items one step of this set may run: the card's rows and pixels (a set may hold more)."""
        pixels = max(1, live[0].item.job.pixels)
        return max(1, min(self.row_cap, self.s.worker_batch_pixel_budget // pixels))

    def _run_step(self, rs: Any, ids: set[str], decode: bool = True) -> tuple[list[Any], float]:
        pixels = sum(self.members[i].item.job.pixels for i in ids)
        started = time.perf_counter()
        self.step_started = self.last_step_at = time.monotonic()
        self.last_step_tokens = rs.kind == "understand"
        try:
            self.r.faults.before_model_call(len(ids), pixels)
            if rs.kind == "understand":  # a token: nothing to decode
                finished = self._guarded(lambda: rs.step(ids), len(ids))
            else:
                finished = self._guarded(lambda: rs.step(ids, decode=decode), len(ids))
        finally:
            self.step_started = None
            seconds = time.perf_counter() - started
            first = self.members.get(next(iter(ids), ""))
            self.r.metrics.observe_model_call(seconds, first.item.job if first is not None else None, len(ids))
        return finished, seconds

    def _after_step(self, rs: Any, live: list[Member], ids: set[str], finished: list[Any], seconds: float) -> None:
        served = self.served[live[0].key]
        for m in live:
            if m.id in ids:
                m.paused = 0
                m.model_seconds += seconds
                owner = m.item.job.owner_id
                served[owner] = served.get(owner, 0.0) + m.live().step_work
            else:
                m.paused += 1
        for item_id, (done, total) in rs.progress().items():
            if item_id in ids:
                self.reporter([item_id], done, total)
        for f in finished:
            m = self.members.pop(f.id)
            if isinstance(f, Finished) and f.images is None:
                self.decoding.append(Decode(m, rs, f, len(ids)))
            else:
                self._done(m, f, len(ids))
        if not rs.items:
            self._close(live[0].key)

    def _on_step_error(self, rs: Any, ids: set[str], exc: Exception) -> None:
        live = sorted((self.members[i] for i in rs.ids), key=lambda m: m.admitted)
        if is_oom(exc):
            release_cached_memory()
            if len(live) > 1:  # shrink: the newest half back to the queue; the step is retried next pass
                back = live[(len(live) + 1) // 2 :]
                self.r.metrics.oom_splits.inc()
                log.warning("out of memory on a step of %d items: %s back to the queue", len(live),
                            [m.id for m in back])
                self.row_cap = max(1, len(self.members) - len(back))
                for m in back:
                    self._remove(m)
                self.r._release([m.claim for m in back])  # at once: their leases are no longer renewed
                return
        if len(ids) == 1 or len(live) == 1:
            m = self.members[next(iter(ids))] if ids else live[0]
            code = failure_code(exc)
            log.warning("job %s: %s: %s", m.id, code, exc)
            self.r._fail(m.claim, code, str(exc) or type(exc).__name__)
            self._remove(m)
            return
        log.exception("model error on a step of %d items: stepping them one by one", len(ids))
        for item_id in sorted(ids):  # a step that raised changed no item: each one alone finds the culprit
            if item_id in self.members and self.members[item_id].key in self.sets:
                self._step_one(self.sets[self.members[item_id].key], item_id)

    def _step_one(self, rs: Any, item_id: str) -> None:
        m = self.members[item_id]
        try:
            finished, seconds = self._run_step(rs, {item_id})
        except DeviceFatal:
            raise
        except Exception as exc:  # noqa: BLE001 - this item's own failure
            log.warning("job %s: model error: %s", item_id, exc)
            self.r._fail(m.claim, JobErrorCode.MODEL_ERROR, str(exc) or type(exc).__name__)
            self._remove(m)
            return
        self._after_step(rs, [m], {item_id}, finished, seconds)

    # ---- decoding -------------------------------------------------------------------------------------------
    def _next_work(self) -> Decode | tuple[str, int]:
        """The decode to run now, else the set to step (`SetShares.next`). A finished image's VAE decode is work of
        its key like a step (for a wave of eight small images it takes far longer than their last MAR iteration),
        so it is ranked as `SetShares` ranks sets: the least-served key first (model time charged per key in this
        loop), then of one key the higher priority (a key's interactive job's step or decode before its bulk's
        decodes), a decode before a step of a key and priority served as much (it finishes a job), decodes in the
        order their steps ended. A decode passed over STARVE_AFTER times goes next, so a stream of urgent work
        delays the bulk's decodes by a few steps at most. Each decode is its own pass of the loop, so a job heard
        arriving is claimed and stepped between two decodes of the bulk instead of after all of them."""
        stepping = self.shares.next(self.sets, self._owners_of) if self.sets else None
        if not self.decoding:
            assert stepping is not None, "the loop asks only while it is busy"
            return stepping
        rank = self.shares.rank
        starving = [d for d in self.decoding if d.passed_over >= STARVE_AFTER]
        first = starving[0] if starving else min(  # stable: in the order their steps ended
            self.decoding, key=lambda d: rank(d.member.item.job.owner_id, d.member.item.job.priority))
        if stepping is None or starving:
            return first
        least = min(rank(owner, priority) for owner, priority in self._owners_of(stepping))
        if rank(first.member.item.job.owner_id, first.member.item.job.priority) <= least:
            return first
        for d in self.decoding:
            d.passed_over += 1
        return stepping

    def _forget_decode(self, job_id: str) -> None:
        self.decoding = [d for d in self.decoding if d.member.id != job_id]

    def _decode(self, d: Decode) -> None:
        m = d.member
        started = time.perf_counter()
        self.step_started = time.monotonic()
        try:
            self.r.faults.before_model_call(1, m.item.job.pixels)
            finished = self._guarded(lambda: d.rs.decode(d.finished), 1)
        except DeviceFatal:
            raise
        except Exception as exc:  # noqa: BLE001 - this item's own failure; the loop goes on
            if is_oom(exc):
                release_cached_memory()
            code = failure_code(exc)
            log.warning("job %s: decoding its images failed: %s: %s", m.id, code, exc)
            self.r._fail(m.claim, code, str(exc) or type(exc).__name__)
            self._remove(m)
            return
        finally:
            self.step_started = None
            self.r.metrics.observe_model_call(time.perf_counter() - started)
        seconds = time.perf_counter() - started
        self.decoding.remove(d)
        m.model_seconds += seconds
        self.shares.decoded(m.key, m.item.job.owner_id, seconds)
        self._done(m, finished, d.call_size)

    # ---- retiring -------------------------------------------------------------------------------------------
    def _done(self, m: Member, finished: Finished | TextFinished, call_size: int) -> None:
        self.reporter([m.id], self.totals[m.id], self.totals[m.id])
        self.watcher.unwatch([m.id])
        self._retire(m, finished, call_size)

    def _retire(self, m: Member, finished: Finished | TextFinished, call_size: int) -> None:
        """Encode, upload and complete in the background (the whole-batch finishing path) while sampling goes on."""
        seed = int(m.item.request.seed)
        result: ModelResult = (TextResult(m.id, finished.text, seed, m.model_seconds)
                               if isinstance(finished, TextFinished)
                               else ImageResult(m.id, finished.images or [], seed, m.model_seconds))  # decoded
        self.finishing.append(self.r._finishers.submit(self._finish, m, result, call_size))

    def _finish(self, m: Member, result: ModelResult, call_size: int) -> None:
        try:
            self.r._succeed(m.item, result, m.model_seconds, call_size, self.keeper)
        except Exception:  # settled through its lease, as after a crash
            log.exception("job %s: finishing failed", m.id)
        finally:
            self.keeper.finish(m.id)

    def _wait_finishing(self) -> None:
        wait(self.finishing)
        self.finishing = []


def runner_class(settings: Settings) -> type[BatchRunner]:
    """The runner `UNIPIC_WORKER_BATCHING` asks for."""
    return ContinuousRunner if settings.worker_batching == "continuous" else BatchRunner
