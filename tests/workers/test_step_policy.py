"""Step scheduling (workers.runner.step_policy): the least-served key's item runs with at most N others, the rest
pause, and an item paused STARVE_AFTER steps in a row is forced in; across a loop's sets (`SetShares`), the set of
the least-served key steps first, sets of one key share the device by time, and nothing starves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.runner.step_policy import STARVE_AFTER, Live, SetShares, choose, step_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def live(job_id: str, owner: str, priority: int = 0, age: int = 0, phase: tuple[int, int] = (0, 8)) -> Live:
    return Live(job_id, owner, priority, T0 + timedelta(seconds=age), 0.0625, phase)


def test_one_key_live_advances_every_item() -> None:
    items = [live(f"a{i}", "A", age=i) for i in range(5)]
    assert choose(items, {"A": 10.0}, {}, companions=0) == {i.id for i in items}


def test_the_under_served_key_runs_first_with_at_most_n_companions_in_policy_order() -> None:
    bulk = [live(f"a{i}", "A", age=i, phase=(i, 8)) for i in range(4)]
    newcomer = live("b0", "B", age=9)
    served = {"A": 1.0}
    assert step_order([*bulk, newcomer], served)[0] == "b0"
    assert choose([*bulk, newcomer], served, {}, companions=0) == {"b0"}
    assert choose([*bulk, newcomer], served, {}, companions=2) == {"b0", "a0", "a1"}


def test_companions_come_a_whole_phase_at_a_time_so_the_bulk_stays_in_step() -> None:
    # Given A's bulk in two phases (three items at step 2, two at step 5) and B's newcomer
    bulk = [live(f"a{i}", "A", age=i, phase=(2, 8)) for i in range(3)]
    bulk += [live(f"a{i}", "A", age=i, phase=(5, 8)) for i in range(3, 5)]
    newcomer = live("b0", "B", age=9)
    served = {"A": 1.0}
    # Then room for two takes the phase of two (the first phase would be split), room for one takes none
    assert choose([*bulk, newcomer], served, {}, companions=2) == {"b0", "a3", "a4"}
    assert choose([*bulk, newcomer], served, {}, companions=1) == {"b0"}
    assert choose([*bulk, newcomer], served, {}, companions=5) == {"b0", *(i.id for i in bulk)}


def test_priority_orders_items_inside_a_key() -> None:
    items = [live("a0", "A", age=0), live("a1", "A", priority=5, age=1), live("b0", "B")]
    assert step_order(items, {"A": 0.0, "B": 5.0})[:2] == ["a1", "a0"]


def test_an_item_paused_too_long_is_forced_in() -> None:
    bulk = [live(f"a{i}", "A", age=i) for i in range(3)]
    newcomer = live("b0", "B")
    paused = {"a2": STARVE_AFTER, "a1": STARVE_AFTER - 1}
    assert choose([*bulk, newcomer], {"A": 1.0}, paused, companions=0) == {"b0", "a2"}


def test_auto_companions_time_the_head_alone_first_then_grow_one_row_at_a_time() -> None:
    from workers.runner.step_policy import StepCosts

    costs = StepCosts()
    costs.observe(8, 0.80)  # the bulk's full steps before the newcomer came
    assert costs.companions(7) == 0  # the head alone is not timed yet: that step times it
    costs.observe(1, 0.10)
    assert costs.companions(7) == 1  # two items never timed: tried once
    costs.observe(2, 0.20)  # a compute-bound device: every row adds its own time
    assert costs.companions(7) == 0
    for _ in range(5):  # the head alone stays the fastest: still none
        costs.observe(1, 0.10)
        assert costs.companions(7) == 0


def test_auto_companions_fill_the_step_where_rows_are_free() -> None:
    from workers.runner.step_policy import SLACK, StepCosts

    costs = StepCosts()
    costs.observe(1, 0.100)
    costs.observe(8, 0.100 * (1 + SLACK / 2))  # a GPU at small sizes: eight cost about what one does
    assert costs.companions(7) == 7
    assert costs.companions(3) == 3  # never more than are live
    costs.observe(8, 0.5)  # the device got slower at eight (a larger working set): a full step no longer fits
    costs.observe(8, 0.5)
    assert costs.companions(7) == 1  # back to exploring upward from the head alone: two items next
    costs.observe(2, 0.105)
    assert costs.companions(7) == 2
    costs.observe(3, 0.2)
    assert costs.companions(7) == 1  # three came out too slow: two it is


IMAGE, TOKENS = ("generate", 64), ("understand", 64)


def run_sets(shares: SetShares, cost: dict, owners: dict, passes: int) -> list:
    """Step the set `shares` picks `passes` times; each step of a set costs `cost[set]` seconds."""
    picked = []
    for _ in range(passes):
        key = shares.next(list(owners), lambda k: [(o, 0) for o in owners[k]])
        shares.stepped(key, owners[key], cost[key])
        picked.append(key)
    return picked


def test_sets_of_one_key_share_the_device_by_time_not_by_step() -> None:
    # Given one key's image set (10 s a step) and understand set (1 s a token), both open from the start
    shares = SetShares()
    shares.opened(IMAGE)
    shares.opened(TOKENS)
    picked = run_sets(shares, {IMAGE: 10.0, TOKENS: 1.0}, {IMAGE: ["A"], TOKENS: ["A"]}, 110)
    # Then each had about half the time: ten tokens for each image step
    assert picked.count(IMAGE) == 10 and picked.count(TOKENS) == 100
    assert abs(shares.used[IMAGE] - shares.used[TOKENS]) <= 10.0


def test_the_least_served_keys_set_goes_first_and_the_other_is_forced_in_after_its_own_step_times() -> None:
    # Given key A's image set that has run alone for a while, and key B's question that opens a token set
    shares = SetShares()
    shares.opened(IMAGE)
    owners = {IMAGE: ["A", "A"]}
    run_sets(shares, {IMAGE: 10.0}, owners, 5)
    shares.opened(TOKENS)
    owners[TOKENS] = ["B"]
    # When they share the loop
    picked = run_sets(shares, {IMAGE: 10.0, TOKENS: 1.0}, owners, 60)
    # Then B's tokens run, and A's set steps only when it sat out STARVE_AFTER of its own step times (40 s of tokens)
    assert picked[:STARVE_AFTER * 10] == [TOKENS] * (STARVE_AFTER * 10)
    assert picked[STARVE_AFTER * 10] == IMAGE
    # and a set opened late starts at the least time of the open ones (it neither banks nor owes time)
    assert shares.used[TOKENS] >= 50.0
    shares.closed(TOKENS)
    assert set(shares.used) == {IMAGE} and TOKENS not in shares.waited


def test_a_decode_serves_its_set_and_key_like_a_step_even_after_the_set_closed() -> None:
    # Given key A's image set forced to starve behind key B's tokens
    shares = SetShares()
    shares.opened(IMAGE)
    owners = {IMAGE: ["A"]}
    run_sets(shares, {IMAGE: 10.0}, owners, 10)
    shares.opened(TOKENS)
    owners[TOKENS] = ["B"]
    assert run_sets(shares, {IMAGE: 10.0, TOKENS: 1.0}, owners, STARVE_AFTER * 10) == [TOKENS] * (STARVE_AFTER * 10)
    assert shares.next(list(owners), lambda k: [(o, 0) for o in owners[k]]) == IMAGE
    # When one of A's finished images is decoded (2 s)
    shares.decoded(IMAGE, "A", 2.0)
    # Then A's set is no longer starving, A is charged the time, and B's tokens wait for it
    assert shares.next(list(owners), lambda k: [(o, 0) for o in owners[k]]) == TOKENS
    assert shares.owners["A"] == 102.0 and shares.waited[TOKENS] == 2.0
    # and a decode for a set already closed charges its key only
    shares.closed(IMAGE)
    shares.decoded(IMAGE, "A", 2.0)
    assert shares.owners["A"] == 104.0 and IMAGE not in shares.used and shares.waited[TOKENS] == 4.0


def test_of_one_keys_sets_the_one_holding_its_higher_priority_goes_first_and_the_other_is_not_starved() -> None:
    # Given key A's image batch (priority -10) that has run alone for a while, and A's own question (priority 0)
    # opening a token set
    shares = SetShares()
    shares.opened(IMAGE)
    owners = {IMAGE: [("A", -10), ("A", -10)]}

    def step(passes: int) -> list:
        picked = []
        for _ in range(passes):
            key = shares.next(list(owners), lambda k: owners[k])
            shares.stepped(key, [o for o, _ in owners[key]], {IMAGE: 10.0, TOKENS: 1.0}[key])
            picked.append(key)
        return picked

    assert step(5) == [IMAGE] * 5
    shares.opened(TOKENS)
    owners[TOKENS] = [("A", 0)]
    # Then the question's tokens run first, and the batch's set steps when it sat out STARVE_AFTER of its step times
    picked = step(STARVE_AFTER * 10 + 1)
    assert picked[: STARVE_AFTER * 10] == [TOKENS] * (STARVE_AFTER * 10) and picked[-1] == IMAGE
