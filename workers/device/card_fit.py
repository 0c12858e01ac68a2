"""Card fit: a CUDA worker picks its largest image size and its batch limits from the card's free memory.

Owns the measured peak-memory table (`workers/device/card_fit_table.json`: peak GiB per kind, size and batch; cells not
measured on a GPU are marked estimated, with their basis: `cpu-accounted` by bench/memory.py, else the formula) and the choice made from it (issue 20, item 5): with
`budget = free - context reserve - margin`, the largest table size whose batch-1 peak fits for every kind the
worker serves becomes `worker_max_pixels` (and so its queues), the largest batch that fits at each size gives
`worker_max_batch` (at the smallest size) and `worker_batch_pixel_budget` (the tightest `batch x pixels` over
the sizes served), so a batch the store claims never holds more than fits. Where a size fits a larger batch
(or fits at all) only with a MAR step's CFG rows run in two passes (rows with `passes: 2`, same results, less
memory), the choice says so (`row_passes`) and the worker's engine runs that size so. Limits the user set explicitly
(`UNIPIC_WORKER_MAX_PIXELS`, `--max-batch`, ...) are kept; out-of-memory splitting stays the fallback.

Free memory is read through NVML (`workers.device.nvml`), so choosing touches no CUDA context and is safe before a
prefork pool forks. It knows nothing of the model, Celery or the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage.settings import Settings
from workers.device.nvml import Nvml

log = logging.getLogger(__name__)

GIB = 2**30
TABLE_PATH = Path(__file__).with_name("card_fit_table.json")
# this process's CUDA context and cuBLAS/cuDNN workspaces, not yet created when we choose; bench/gpu_suite.py
# measures the real figure on a GPU (replace this allowance with it)
CONTEXT_RESERVE_GIB = 0.6
MARGIN_FRACTION = 0.05  # allocator fragmentation and run-to-run variation
MIN_MARGIN_GIB = 0.25
FITTED_FIELDS = ("worker_max_pixels", "worker_max_batch", "worker_batch_pixel_budget")


class CardTooSmall(Exception):
    """Not even the smallest table size fits at batch 1 for the kinds served."""


class MemoryRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    size: int = Field(gt=0)
    batch: int = Field(ge=1)
    peak_gib: float = Field(gt=0)
    estimated: bool = False  # not measured on a GPU
    basis: str = "measured"  # measured | cpu-accounted (bench/memory.py, where no GPU measurement exists) | estimated
    passes: int = Field(default=1, ge=1)  # a MAR step's rows in this many passes (2: CFG's cond and uncond apart)


class MemoryTable(BaseModel):
    """Peak GPU memory per (kind, size, batch)."""

    model_config = ConfigDict(frozen=True)

    source: str
    rows: list[MemoryRow]

    def peak(self, kind: str, size: int, batch: int, passes: int = 1) -> float | None:
        for row in self.rows:
            if (row.kind, row.size, row.batch, row.passes) == (kind, size, batch, passes):
                return row.peak_gib
        return None

    def sizes(self) -> list[int]:
        return sorted({row.size for row in self.rows})

    def max_batch(self) -> int:
        return max(row.batch for row in self.rows)


class CardChoice(BaseModel):
    """What a worker chose for its card (shown on GET /v1/workers and in the start-up log)."""

    model_config = ConfigDict(frozen=True)

    free_gib: float
    budget_gib: float
    max_pixels: int
    max_size: int
    batch_by_size: dict[int, int]
    max_batch: int
    batch_pixel_budget: int
    row_passes: dict[int, int] = Field(default_factory=dict,
                                       description="sizes whose MAR steps run their rows in passes (2: CFG apart)")
    kept: list[str] = Field(default_factory=list, description="limits set explicitly, left as they were")
    table: str = ""

    def line(self) -> str:
        return (f"card fit: {self.free_gib:.1f} GiB free, budget {self.budget_gib:.1f} GiB -> max size "
                f"{self.max_size}px, batch by size {self.batch_by_size}, max batch {self.max_batch}, "
                f"pixel budget {self.batch_pixel_budget}"
                + (f", CFG rows in passes {self.row_passes}" if self.row_passes else "")
                + (f" (kept explicit {self.kept})" if self.kept else ""))


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> MemoryTable:
    return MemoryTable.model_validate(json.loads(path.read_text()))


def budget_gib(free_gib: float, context_gib: float = CONTEXT_RESERVE_GIB) -> float:
    """Memory the model may use: free memory less this process's context and a safety margin."""
    return free_gib - context_gib - max(MIN_MARGIN_GIB, MARGIN_FRACTION * free_gib)


def choose(free_gib: float, kinds: Iterable[str], table: MemoryTable | None = None,
           sizes: Iterable[int] | None = None, context_gib: float = CONTEXT_RESERVE_GIB) -> CardChoice:
    """The largest size and per-size batch that fit `free_gib` for every kind in `kinds`."""
    table = table or load_table()
    kinds = list(kinds)
    budget = budget_gib(free_gib, context_gib)
    allowed = set(sizes) if sizes is not None else None
    batch_by_size: dict[int, int] = {}
    row_passes: dict[int, int] = {}
    for size in table.sizes():
        if allowed is not None and size not in allowed:
            continue
        fits = {passes: fitting_batch(table, kinds, size, budget, passes) for passes in (1, 2)}
        passes = 2 if fits[2] > fits[1] else 1  # one batch where it fits as many items
        if fits[passes] == 0:
            break  # larger sizes need more memory still
        batch_by_size[size] = fits[passes]
        if passes > 1:
            row_passes[size] = passes
    if not batch_by_size:
        raise CardTooSmall(f"{free_gib:.1f} GiB free (budget {budget:.1f} GiB) fits no image size for {kinds} at "
                           f"batch 1; the smallest needs {min_peak(table, kinds):.1f} GiB")
    max_size = max(batch_by_size)
    return CardChoice(
        free_gib=round(free_gib, 2), budget_gib=round(budget, 2), max_pixels=max_size * max_size, max_size=max_size,
        batch_by_size=batch_by_size, max_batch=batch_by_size[min(batch_by_size)],
        batch_pixel_budget=pixel_budget(batch_by_size, table.max_batch()), row_passes=row_passes, table=table.source,
    )


def fitting_batch(table: MemoryTable, kinds: list[str], size: int, budget: float, passes: int) -> int:
    """The largest batch whose rows (with this many passes) fit `budget` for every kind; 0 if none (or no rows)."""
    fits = 0
    for batch in range(1, table.max_batch() + 1):
        peaks = [table.peak(kind, size, batch, passes) for kind in kinds]
        if any(p is None or p > budget for p in peaks):
            break
        fits = batch
    return fits


def configure_engine(engine: Any, choice: CardChoice | None = None) -> None:
    """Give a loaded engine this process's choice of row passes per size (`UniPicEngine.row_passes`); engines
    without the knob (tests' stand-ins) are left alone."""
    choice = choice if choice is not None else chosen()
    if choice is not None and hasattr(engine, "row_passes"):
        engine.row_passes = dict(choice.row_passes)


def pixel_budget(batch_by_size: dict[int, int], table_batch: int) -> int:
    """The batch pixel budget that keeps every size within its batch: the tightest `batch x size²` among the
    sizes memory limits (batch below the table's largest); if none, the largest size's full batch."""
    limited = [b * s * s for s, b in batch_by_size.items() if b < table_batch]
    if limited:
        return min(limited)
    size = max(batch_by_size)
    return batch_by_size[size] * size * size


def min_peak(table: MemoryTable, kinds: list[str]) -> float:
    size = table.sizes()[0]
    return max(table.peak(k, size, 1) or 0.0 for k in kinds)


def free_gib(device: str, nvml: Nvml | None = None) -> float | None:
    """Free memory of `cuda` / `cuda:N` (N counts visible devices) from NVML; None when NVML cannot say."""
    readings = (nvml or Nvml()).read()
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= len(readings):
        return None
    r = readings[index]
    return (r.memory_total - r.memory_used) / GIB


def apply(settings: Settings, choice: CardChoice) -> tuple[Settings, CardChoice]:
    """Settings with the chosen limits, except those the user set explicitly (recorded in `choice.kept`)."""
    chosen: dict[str, Any] = {"worker_max_pixels": choice.max_pixels, "worker_max_batch": choice.max_batch,
                              "worker_batch_pixel_budget": choice.batch_pixel_budget}
    kept = [f for f in FITTED_FIELDS if f in settings.model_fields_set]
    update = {k: v for k, v in chosen.items() if k not in kept}
    return settings.model_copy(update=update), choice.model_copy(update={"kept": kept})


_chosen: CardChoice | None = None


def fit_to_card(settings: Settings, read_free: Callable[[str], float | None] = free_gib) -> Settings:
    """For a `cuda` worker: choose from the card's free memory and apply it; any other device is unchanged.

    The choice is logged and kept for `chosen()` (the worker advertises it). Raises `CardTooSmall`."""
    global _chosen
    if not settings.worker_device.startswith("cuda"):
        return settings
    if all(f in settings.model_fields_set for f in FITTED_FIELDS):
        log.info("card fit: every limit set explicitly; nothing chosen")
        return settings
    free = read_free(settings.worker_device)
    if free is None:
        log.warning("card fit: cannot read free memory of %s (no NVML); using the configured limits",
                    settings.worker_device)
        return settings
    try:
        fitted, choice = apply(settings, choose(free, settings.worker_kinds, sizes=settings.allowed_sizes))
    except CardTooSmall as exc:  # the warm-up then fails with out_of_memory and says what to do
        log.error("card fit: %s; using the configured limits", exc)
        return settings
    _chosen = choice
    log.info(choice.line())
    return fitted


def chosen() -> CardChoice | None:
    """The choice `fit_to_card` made in this process (inherited by forked pool children), if any."""
    return _chosen


def with_choice(health: dict[str, Any]) -> dict[str, Any]:
    """A worker's health report plus its card-fit choice (how GET /v1/workers shows it)."""
    choice = chosen()
    return {**health, "card_fit": choice.model_dump(mode="json")} if choice is not None else health
