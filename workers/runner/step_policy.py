"""Step scheduling (issue 25, item 4): which live items of a running set advance in the next sampling step.

The one scheduling policy decides (`storage.scheduling.policy.service_order`: fair share across keys, priority then age
inside a key). Here the keys are the owners of the set's live items, charged with the work the set already did
for them (megapixel-steps, weight 1), so a key that just joined is the least served. When more than one key is
live, the step runs the policy's first item with at most `companions` others in policy order; the rest pause with
their state kept. An item paused `STARVE_AFTER` steps in a row is forced in, so nothing starves. With one key
live every item advances. Pure: no clocks, no store, no model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from storage.scheduling.policy import KeyShare, service_order, within_key_of

STARVE_AFTER = 4  # an item paused this many steps in a row advances in the next one


@dataclass(frozen=True)
class Live:
    """One live item as the policy sees it."""

    id: str
    owner_id: str
    priority: int
    created_at: datetime
    step_work: float  # megapixel-steps one step of this item costs


def step_order(items: Iterable[Live], served: Mapping[str, float]) -> list[str]:
    """Live item ids in the policy's order; `served` is the work done so far per owner in this set."""
    by_owner: dict[str, list[Live]] = {}
    for item in items:
        by_owner.setdefault(item.owner_id, []).append(item)
    keys = sorted((KeyShare(owner, served.get(owner, 0.0), 1.0) for owner in by_owner), key=lambda k: k.rank)

    def jobs_of(key: KeyShare) -> list[Live]:
        return sorted(by_owner[key.owner_id], key=lambda i: within_key_of(i.priority, i.created_at, i.id))

    return [item.id for _, item in service_order(keys, jobs_of, lambda i: i.step_work)]


def choose(items: list[Live], served: Mapping[str, float], paused: Mapping[str, int], companions: int) -> set[str]:
    """Ids that advance in the next step: everything when one key is live; otherwise the policy's head with at
    most `companions` others in policy order, plus every item paused `STARVE_AFTER` steps in a row."""
    if len({i.owner_id for i in items}) <= 1:
        return {i.id for i in items}
    order = step_order(items, served)
    chosen = set(order[: 1 + companions])
    chosen |= {i.id for i in items if paused.get(i.id, 0) >= STARVE_AFTER}
    return chosen
