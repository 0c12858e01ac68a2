"""Step scheduling (issue 25, item 4): which live items of a running set advance in the next sampling step.

The one scheduling policy decides (`storage.scheduling.policy.service_order`: fair share across keys, priority then age
inside a key). Here the keys are the owners of the set's live items, charged with the work the set already did
for them (megapixel-steps, weight 1), so a key that just joined is the least served. When more than one key is
live, the step runs the policy's first item with at most `companions` others in policy order, whole phases at a
time (items at the same step; a split phase would pad every later step); the rest pause with their state kept.
An item paused `STARVE_AFTER` steps in a row is forced in, so nothing starves. With one key live every item
advances. A step never runs more than the card's rows (a full set may hold one newcomer over them). Pure: no
clocks, no store, no model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from storage.scheduling.policy import KeyShare, service_order, within_key_of

STARVE_AFTER = 4  # an item paused this many steps in a row advances in the next one
SLACK = 0.2  # "near its minimum": a step with companions may take this much longer than the head alone
SMOOTHING = 0.2  # weight of the newest step in a row count's running mean


@dataclass(frozen=True)
class Live:
    """One live item as the policy sees it."""

    id: str
    owner_id: str
    priority: int
    created_at: datetime
    step_work: float  # megapixel-steps one step of this item costs
    phase: tuple[int, int] = (0, 0)  # (steps done, steps in all): items in one phase step without padding


def step_order(items: Iterable[Live], served: Mapping[str, float]) -> list[str]:
    """Live item ids in the policy's order; `served` is the work done so far per owner in this set."""
    by_owner: dict[str, list[Live]] = {}
    for item in items:
        by_owner.setdefault(item.owner_id, []).append(item)
    keys = sorted((KeyShare(owner, served.get(owner, 0.0), 1.0) for owner in by_owner), key=lambda k: k.rank)

    def jobs_of(key: KeyShare) -> list[Live]:
        return sorted(by_owner[key.owner_id], key=lambda i: within_key_of(i.priority, i.created_at, i.id))

    return [item.id for _, item in service_order(keys, jobs_of, lambda i: i.step_work)]


def choose(items: list[Live], served: Mapping[str, float], paused: Mapping[str, int], companions: int,
           max_rows: int | None = None) -> set[str]:
    """Ids that advance in the next step: everything when one key is live; otherwise the policy's head with at
    most `companions` others in policy order, plus every item paused `STARVE_AFTER` steps in a row. Never more
    than `max_rows` (what one step may hold on the card; a set can hold one item more, a newcomer's): then the
    starving go first, longest paused first, then policy order, so every item still advances."""
    if len({i.owner_id for i in items}) <= 1:
        chosen = {i.id for i in items}
    else:
        order = step_order(items, served)
        chosen = {order[0], *_whole_phases(items, order[1:], companions)}
        chosen |= {i.id for i in items if paused.get(i.id, 0) >= STARVE_AFTER}
    if max_rows is None or len(chosen) <= max_rows:
        return chosen
    rank = {item_id: n for n, item_id in enumerate(step_order(items, served))}
    first = sorted(chosen, key=lambda i: (paused.get(i, 0) < STARVE_AFTER, -paused.get(i, 0), rank[i]))
    return set(first[: max(1, max_rows)])


def _whole_phases(items: list[Live], order: list[str], room: int) -> list[str]:
    """Companions in policy order, a whole phase at a time (items at the same step of the same schedule), as many
    phases as fit in `room`. Splitting a phase would leave its items at different steps for the rest of their
    run, and a step over items at different steps pads the shorter ones: the bulk would pay for that every step
    after the newcomer left."""
    phase_of = {i.id: i.phase for i in items}
    phases: dict[tuple[int, int], list[str]] = {}
    for item_id in order:
        phases.setdefault(phase_of[item_id], []).append(item_id)
    taken: list[str] = []
    for members in phases.values():
        if len(members) <= room - len(taken):
            taken += members
    return taken


@dataclass
class StepCosts:
    """A running set's step seconds by the number of items a step advanced (a running mean per count)."""

    means: dict[int, float] = field(default_factory=dict)

    def observe(self, rows: int, seconds: float) -> None:
        old = self.means.get(rows)
        self.means[rows] = seconds if old is None else old + SMOOTHING * (seconds - old)

    def companions(self, limit: int) -> int:
        """Others that may share the head's step: one fewer than the most items a step was seen to advance
        within SLACK of the head alone. Until the head alone has been timed it is none (that step times it);
        while the next larger step has never been timed, that one is tried once, so the table grows one row
        at a time (a step that came out too slow is not tried again; one used is timed again every time)."""
        if limit <= 0 or 1 not in self.means:
            return 0
        bound = self.means[1] * (1 + SLACK)
        best = max(n for n, t in self.means.items() if t <= bound)  # fewer rows than a fast step cost no more
        if best > limit:
            return limit
        if best + 1 not in self.means:
            return best  # best + 1 items: times the next size
        return best - 1


@dataclass
class SetShares:
    """Which running set of a loop steps next when it holds several (kinds or sizes): the set holding the least-served
    key (the model time charged to each key in this loop: a step's time split among the items it advanced), then of
    one key's sets the one holding its highest priority (a key's question, priority 0, before its own image batch,
    -10), then the set that had the least model time. Sets share the device by time, not by step: an understand
    set's step is one token, a small fraction of an image step, so a question behind an image bulk takes many
    tokens per image step instead of one. A set opens at the least time of the open ones (it banks nothing and owes
    nothing), and one that sat out for STARVE_AFTER of its own step times is forced in, so nothing starves. Pure,
    like `choose`."""

    used: dict[tuple[str, int], float] = field(default_factory=dict)  # model seconds per open set
    waited: dict[tuple[str, int], float] = field(default_factory=dict)  # seconds others stepped since it last did
    last: dict[tuple[str, int], float] = field(default_factory=dict)  # its last step's seconds
    owners: dict[str, float] = field(default_factory=dict)  # model seconds charged to each key

    def opened(self, key: tuple[str, int]) -> None:
        self.used[key] = min(self.used.values(), default=0.0)
        self.waited[key] = 0.0

    def closed(self, key: tuple[str, int]) -> None:
        for table in (self.used, self.waited, self.last):
            table.pop(key, None)

    def stepped(self, key: tuple[str, int], owners: list[str], seconds: float) -> None:
        """A step of `key` advanced items of these owners (one entry per item) in `seconds`."""
        for other in self.waited:
            self.waited[other] += seconds
        self.waited[key], self.last[key] = 0.0, seconds
        self.used[key] = self.used.get(key, 0.0) + seconds
        for owner in owners:
            self.owners[owner] = self.owners.get(owner, 0.0) + seconds / len(owners)

    def decoded(self, key: tuple[str, int], owner: str, seconds: float) -> None:
        """A finished image of set `key` (open or closed since) was decoded for `owner`: it counts as a step of
        that set (an open set that was starving is served by it) and as that key's model time."""
        if key in self.used:
            self.stepped(key, [owner], seconds)
            return
        for other in self.waited:
            self.waited[other] += seconds
        self.owners[owner] = self.owners.get(owner, 0.0) + seconds

    def next(self, keys: Iterable[tuple[str, int]],
             owners_of: Callable[[tuple[str, int]], list[tuple[str, int]]]) -> tuple[str, int]:
        """The set to step next; `owners_of(set)` lists (owner, priority) of its live items."""
        keys = list(keys)
        if len(keys) == 1:
            return keys[0]
        starving = [k for k in keys if self.waited.get(k, 0.0) > 0 and
                    self.waited[k] >= STARVE_AFTER * self.last.get(k, 0.0)]
        if starving:
            return max(starving, key=lambda k: self.waited[k])

        def rank(key: tuple[str, int]) -> tuple[tuple[float, int], float]:
            least = min((self.rank(o, priority) for o, priority in owners_of(key)), default=(0.0, 0))
            return least, self.used.get(key, 0.0)

        return min(keys, key=rank)

    def rank(self, owner: str, priority: int) -> tuple[float, int]:
        """Work of `owner` at `priority` in the loop's order: the least-served key first, then its higher
        priority (the loop ranks decodes against steps by it too)."""
        return self.owners.get(owner, 0.0), -priority
