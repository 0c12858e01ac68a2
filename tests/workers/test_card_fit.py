"""Card fit (issue 20, item 5): from the committed memory table, what 8, 12, 16 and 24 GB cards choose."""

from __future__ import annotations

import pytest

from storage.settings import Settings
from workers.device.card_fit import CardTooSmall, choose, fit_to_card, load_table, with_choice

ALL = ["generate", "edit", "understand"]


def test_table_is_complete_and_marks_estimates() -> None:
    table = load_table()
    assert table.sizes() == [256, 512, 1024]
    assert table.max_batch() == 8
    for kind in ALL:
        for size in table.sizes():
            peaks = [table.peak(kind, size, b) for b in range(1, 9)]
            assert all(p is not None for p in peaks)
            assert peaks == sorted(peaks)  # more items never need less memory
    measured = {(r.kind, r.size, r.batch) for r in table.rows if not r.estimated}
    assert ("edit", 1024, 8) in measured and ("edit", 512, 4) not in measured
    # 1024 at batch 1 was measured on the code before issue 26's cuts: now cpu-accounted against that measurement
    assert ("edit", 1024, 1) not in measured
    assert {r.basis for r in table.rows if (r.kind, r.size, r.batch) == ("edit", 1024, 1)} == {"cpu-accounted"}


@pytest.mark.parametrize(("card_gib", "max_size", "batch_by_size"), [
    (7.6, 1024, {256: 8, 512: 3, 1024: 1}),  # an 8 GB card with a desktop on it: 1024 fits since issue 26's cuts
    (11.5, 1024, {256: 8, 512: 8, 1024: 3}),  # 1024 at batch 2-4 cpu-accounted (bench.memory), no longer extrapolated
    (15.5, 1024, {256: 8, 512: 8, 1024: 4}),
    (23.5, 1024, {256: 8, 512: 8, 1024: 8}),
])
def test_consumer_cards(card_gib: float, max_size: int, batch_by_size: dict[int, int]) -> None:
    table = load_table()
    choice = choose(card_gib, ALL)
    assert (choice.max_size, choice.batch_by_size) == (max_size, batch_by_size)
    assert choice.max_pixels == max_size * max_size
    # whatever the store may claim under these limits fits the budget, at every size and for every kind
    for size in batch_by_size:
        # the store always takes a claim's first job, then fills what the pixel budget leaves
        claimable = min(choice.max_batch, 1 + max(0, (choice.batch_pixel_budget - size * size) // (size * size)))
        assert claimable == batch_by_size[size]
        assert all((table.peak(k, size, claimable) or 0) <= choice.budget_gib for k in ALL)
    # the next size up (if any) does not fit at batch 1 for some kind
    bigger = [s for s in table.sizes() if s > max_size]
    if bigger:
        assert max(table.peak(k, bigger[0], 1) or 0 for k in ALL) > choice.budget_gib


def test_fewer_kinds_can_fit_more() -> None:
    assert choose(7.55, ["generate"]).max_size == 1024
    assert choose(7.55, ALL).max_size == 512  # edit at 1024 needs a little more


def test_too_small_card() -> None:
    with pytest.raises(CardTooSmall):
        choose(4.0, ALL)


def test_fit_to_card_keeps_explicit_limits_and_ignores_cpu() -> None:
    cpu = Settings(worker_device="cpu")
    assert fit_to_card(cpu, read_free=lambda _: 12.0) is cpu
    fitted = fit_to_card(Settings(worker_device="cuda", worker_max_batch=2), read_free=lambda _: 15.5)
    assert (fitted.worker_max_pixels, fitted.worker_max_batch, fitted.worker_batch_pixel_budget) == (
        1024 * 1024, 2, 4 * 1024 * 1024)
    report = with_choice({"streak": 0})
    assert report["streak"] == 0
    assert report["card_fit"]["kept"] == ["worker_max_batch"]
    assert report["card_fit"]["batch_by_size"] == {"256": 8, "512": 8, "1024": 4}
    unknown = Settings(worker_device="cuda:0")
    assert fit_to_card(unknown, read_free=lambda _: None) is unknown


def test_cfg_rows_in_two_passes_where_one_batch_does_not_fit() -> None:
    # issue 26: a size whose one-pass rows do not fit (or fit fewer items) runs its CFG rows in two passes, and
    # the worker's engine is told so (`configure_engine`); where one pass fits as many, it stays one batch
    from workers.device.card_fit import MemoryRow, MemoryTable, configure_engine

    def rows(size: int, passes: int, peaks: list[float]) -> list[MemoryRow]:
        return [MemoryRow(kind="edit", size=size, batch=b + 1, peak_gib=p, passes=passes) for b, p in enumerate(peaks)]

    table = MemoryTable(source="test", rows=rows(512, 1, [5.0, 5.5]) + rows(512, 2, [4.9, 5.3])
                        + rows(1024, 1, [6.9, 7.9]) + rows(1024, 2, [6.3, 7.1]))
    choice = choose(7.6, ["edit"], table)  # budget 6.62
    assert (choice.max_size, choice.batch_by_size, choice.row_passes) == (1024, {512: 2, 1024: 1}, {1024: 2})
    assert "CFG rows in passes {1024: 2}" in choice.line()
    roomy = choose(8.6, ["edit"], table)  # budget 7.57: one pass fits batch 1 at 1024, two passes batch 2
    assert (roomy.batch_by_size, roomy.row_passes) == ({512: 2, 1024: 2}, {1024: 2})
    assert choose(9.6, ["edit"], table).row_passes == {}  # one batch fits batch 2 too

    class Engine:
        row_passes: dict[int, int] = {}

    engine = Engine()
    configure_engine(engine, choice)
    assert engine.row_passes == {1024: 2}
