"""Time limits that scale with the work in a batch.

A batch may run for `max(floor, megapixels x steps x k)` seconds (the soft limit): past it the worker drops the
batch at the next sampling step and fails its jobs with `timeout`. If a step itself hangs, the worker stops
renewing the batch's leases a grace period later (the hard limit), so the sweeper reclaims the jobs: a stuck
worker is detected by its lease. Plain arithmetic; no clocks are read here except by `BatchClock`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# understand jobs decode tokens rather than sampling steps; this many tokens count as one step of work
TOKENS_PER_STEP = 16


def work_steps(kind: str, params: Mapping[str, Any]) -> int:
    """Steps of work one job asks for: its sampling steps, or its token budget in step units."""
    if kind == "understand":
        return max(1, int(params.get("max_new_tokens", 256)) // TOKENS_PER_STEP)
    return max(1, int(params.get("steps", 1)))


def job_pixels(kind: str, params: Mapping[str, Any]) -> int:
    """Pixels one job produces (or reads, for understand)."""
    if kind == "understand":
        size = int(params.get("size", 0))
        return size * size
    return int(params.get("width", 0)) * int(params.get("height", 0)) * int(params.get("num_images", 1))


def soft_limit_seconds(
    jobs: Iterable[tuple[str, Mapping[str, Any]]], floor_seconds: float, seconds_per_megapixel_step: float
) -> float:
    """The soft time limit of a batch of `(kind, params)` jobs."""
    work = sum(job_pixels(kind, params) / 1e6 * work_steps(kind, params) for kind, params in jobs)
    return max(floor_seconds, work * seconds_per_megapixel_step)


def hard_limit_seconds(soft_seconds: float, lease_seconds: float) -> float:
    """When to stop renewing leases of a batch that ignored its soft limit (a hung step)."""
    return soft_seconds + max(lease_seconds, 0.25 * soft_seconds)


@dataclass
class BatchClock:
    """The time budget of one running batch."""

    soft_seconds: float
    hard_seconds: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def soft_expired(self) -> bool:
        return self.elapsed() > self.soft_seconds

    def hard_expired(self) -> bool:
        return self.elapsed() > self.hard_seconds
