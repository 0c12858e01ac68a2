"""Step scheduling (workers.runner.step_policy): the least-served key's item runs with at most N others, the rest
pause, and an item paused STARVE_AFTER steps in a row is forced in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.runner.step_policy import STARVE_AFTER, Live, choose, step_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def live(job_id: str, owner: str, priority: int = 0, age: int = 0) -> Live:
    return Live(job_id, owner, priority, T0 + timedelta(seconds=age), 0.0625)


def test_one_key_live_advances_every_item() -> None:
    items = [live(f"a{i}", "A", age=i) for i in range(5)]
    assert choose(items, {"A": 10.0}, {}, companions=0) == {i.id for i in items}


def test_the_under_served_key_runs_first_with_at_most_n_companions_in_policy_order() -> None:
    bulk = [live(f"a{i}", "A", age=i) for i in range(4)]
    newcomer = live("b0", "B", age=9)
    served = {"A": 1.0}
    assert step_order([*bulk, newcomer], served)[0] == "b0"
    assert choose([*bulk, newcomer], served, {}, companions=0) == {"b0"}
    assert choose([*bulk, newcomer], served, {}, companions=2) == {"b0", "a0", "a1"}


def test_priority_orders_items_inside_a_key() -> None:
    items = [live("a0", "A", age=0), live("a1", "A", priority=5, age=1), live("b0", "B")]
    assert step_order(items, {"A": 0.0, "B": 5.0})[:2] == ["a1", "a0"]


def test_an_item_paused_too_long_is_forced_in() -> None:
    bulk = [live(f"a{i}", "A", age=i) for i in range(3)]
    newcomer = live("b0", "B")
    paused = {"a2": STARVE_AFTER, "a1": STARVE_AFTER - 1}
    assert choose([*bulk, newcomer], {"A": 1.0}, paused, companions=0) == {"b0", "a2"}
