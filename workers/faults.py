"""TEST-ONLY fault injector: makes a worker fail on purpose so tests can watch it recover.

Off unless one of these environment variables is set (production never sets them):
- `UNIPIC_FAULT_OOM_ABOVE=N`: a model call with more than N items raises `torch.OutOfMemoryError`.
- `UNIPIC_FAULT_OOM_ABOVE_PIXELS=P`: a model call producing more than P pixels raises `torch.OutOfMemoryError`.
- `UNIPIC_FAULT_STEP_DELAY_MS=D`: each sampling step sleeps D ms (to catch a batch mid-run: cancel, SIGKILL).

Nothing here changes results; it only raises or waits. It is read once when the worker starts.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultInjector:
    oom_above_items: int | None = None
    oom_above_pixels: int | None = None
    step_delay_seconds: float = 0.0

    @classmethod
    def from_env(cls) -> FaultInjector:
        def _int(name: str) -> int | None:
            value = os.environ.get(name, "").strip()
            return int(value) if value else None

        injector = cls(
            oom_above_items=_int("UNIPIC_FAULT_OOM_ABOVE"),
            oom_above_pixels=_int("UNIPIC_FAULT_OOM_ABOVE_PIXELS"),
            step_delay_seconds=(_int("UNIPIC_FAULT_STEP_DELAY_MS") or 0) / 1000.0,
        )
        if injector.active:
            log.warning("FAULT INJECTION ACTIVE (test only): %s", injector)
        return injector

    @property
    def active(self) -> bool:
        return bool(self.oom_above_items or self.oom_above_pixels or self.step_delay_seconds)

    def before_model_call(self, items: int, pixels: int) -> None:
        """Raise a simulated out-of-memory error when the call is larger than allowed."""
        too_many = self.oom_above_items is not None and items > self.oom_above_items
        too_big = self.oom_above_pixels is not None and pixels > self.oom_above_pixels
        if too_many or too_big:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected fault: {items} items, {pixels} pixels)"
            )

    def on_step(self) -> None:
        """Slow a sampling step down."""
        if self.step_delay_seconds:
            time.sleep(self.step_delay_seconds)
