"""What a continuous loop (`workers.runner.continuous`) holds besides its sets: its live members, the claims it
makes off the sampling thread (`Look`) and what they found (`Found`), and finished images waiting for their decode
(`Decode`). Records only; the loop decides what happens to them."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from model.engine.running_set import Finished
from storage.records import Claim, JobRecord
from workers.runner.batching import Item
from workers.runner.engine import ModelRequest
from workers.runner.inputs import prepare
from workers.runner.limits import BatchClock
from workers.runner.step_policy import STARVE_AFTER, Live

log = logging.getLogger(__name__)

OWN, ELSEWHERE, OWN_AFTER_ELSEWHERE, NEWCOMER = "own", "elsewhere", "own after elsewhere", "newcomer"  # Found.where


@dataclass(frozen=True)
class Found:
    """What one claim took (with the jobs' records, read on the same thread) and which queues it asked."""

    where: str  # OWN, ELSEWHERE (another queue of a direct worker had work), OWN_AFTER_ELSEWHERE, NEWCOMER
    claims: list[Claim]
    jobs: dict[str, JobRecord]
    requests: dict[str, ModelRequest] = field(default_factory=dict)  # inputs read and decoded on the same thread

    @classmethod
    def of(cls, store: Any, objects: Any, where: str, claims: list[Claim]) -> Found:
        """The claims with their records and model requests: an edit's or a question's input image is fetched
        and decoded here, off the sampling thread when this runs on the look thread. A job whose input cannot be
        read here is read again at admission (`BatchRunner._prepare`), which fails it if the input is invalid."""
        jobs = {j.id: j for j in store.get_many([c.job_id for c in claims])} if claims else {}
        requests: dict[str, ModelRequest] = {}
        for job in jobs.values():
            try:
                requests[job.id] = prepare(objects, job)
            except Exception as exc:  # noqa: BLE001 - admission reads it again and settles the job
                log.debug("job %s: input not read with its claim: %s", job.id, exc)
        return cls(where, claims, jobs, requests)


@dataclass
class Look:
    """A claim in flight on the look thread; the rows and pixels it may fill are held for it until collected."""

    future: Future[Found | None]
    rows: int
    pixels: int
    asked_at: float
    frees: dict[str, int] = field(default_factory=dict)  # a cancel look's: the canceled jobs whose rows it fills
    # (their pixels); held for it only once they left (`_Loop._free`)
    heard: int = 0  # a heard look's (`_Loop._wake_heard`): the queue's wake-ups it answers (counted so far)


@dataclass(frozen=True)
class ClaimView:
    """What a claim made off the sampling thread while a model call runs may take (`_Loop._wake_heard`): the rows
    and pixels free when the call began (the call only frees more) and the keys live with their highest priority
    (a full set's newcomer is of a key above those), set by the sampling thread, which changes none of it before
    the call ends."""

    rows: int
    pixels: int
    owners: dict[str, int]
    over_cap: bool  # a newcomer already holds the one row over the cap


@dataclass
class Decode:
    """An item whose last step is done, waiting for its VAE decode (`_Loop._next_work`); its row is free."""

    member: Member
    rs: Any  # the RunningSet it left (its model and grid decode it, even after the set closed)
    finished: Finished  # images None
    call_size: int  # items its last step advanced
    passed_over: int = 0  # steps that went before it (`_Loop._next_work` bounds them)


@dataclass
class Member:
    """One claimed job live in a running set."""

    item: Item
    key: tuple[str, int]
    clock: BatchClock
    admitted: int  # admission order: out of memory sends the newest back first
    paused: int = 0  # steps in a row it sat out
    model_seconds: float = 0.0  # of the steps it took part in

    @property
    def id(self) -> str:
        return self.item.job.id

    @property
    def claim(self) -> Claim:
        return self.item.claim

    def over_time(self) -> bool:
        """Past its own time limit: in the steps it took, or in wall time with every pause the step policy may
        impose (it advances at least once every STARVE_AFTER + 1 steps)."""
        soft = self.clock.soft_seconds
        return self.model_seconds > soft or self.clock.elapsed() > soft * (STARVE_AFTER + 1)

    def live(self, phase: tuple[int, int] = (0, 0)) -> Live:
        job = self.item.job
        return Live(job.id, job.owner_id, job.priority, job.created_at, job.pixels * 1e-6, phase)
