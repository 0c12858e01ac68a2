"""TEST-ONLY fault injector: makes a worker fail on purpose so tests can watch it recover.

Off unless one of these environment variables is set (production never sets them):
- `UNIPIC_FAULT_OOM_ABOVE=N`: a model call with more than N items raises `torch.OutOfMemoryError`.
- `UNIPIC_FAULT_OOM_ABOVE_PIXELS=P`: a model call producing more than P pixels raises `torch.OutOfMemoryError`.
- `UNIPIC_FAULT_STEP_DELAY_MS=D`: each sampling step sleeps D ms (to catch a batch mid-run: cancel, SIGKILL).
- `UNIPIC_FAULT_HOLD_FILE=PATH` (with `UNIPIC_FAULT_HOLD_AFTER_STEPS=N`, default 1): after the worker's first N
  sampling steps, every step waits until PATH exists. A test holds a batch mid-run for as long as it needs
  (a signal to arrive, a state to be observed) and then releases it, so nothing depends on how fast steps run.
- `UNIPIC_FAULT_DEVICE_LOST_AFTER_STEPS=S`: after S sampling steps the device is "lost": that step and every
  later model call (warm-up probes included) raise the error a GPU that fell off the bus raises.

Nothing here changes results; it only raises or waits. It is read once when the worker starts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEVICE_LOST_MESSAGE = "CUDA error: unspecified launch failure (injected fault: the device was lost)"


@dataclass
class _DeviceState:
    """The device-lost fault's mutable part: steps seen so far, and whether the device is gone."""

    steps: int = 0
    lost: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _StepCount:
    steps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> int:
        with self.lock:
            self.steps += 1
            return self.steps


@dataclass(frozen=True)
class FaultInjector:
    oom_above_items: int | None = None
    oom_above_pixels: int | None = None
    step_delay_seconds: float = 0.0
    device_lost_after_steps: int | None = None
    hold_file: str | None = None
    hold_after_steps: int = 1
    _device: _DeviceState = field(default_factory=_DeviceState, compare=False, repr=False)
    _held: _StepCount = field(default_factory=_StepCount, compare=False, repr=False)

    @classmethod
    def from_env(cls) -> FaultInjector:
        def _int(name: str) -> int | None:
            value = os.environ.get(name, "").strip()
            return int(value) if value else None

        injector = cls(
            oom_above_items=_int("UNIPIC_FAULT_OOM_ABOVE"),
            oom_above_pixels=_int("UNIPIC_FAULT_OOM_ABOVE_PIXELS"),
            step_delay_seconds=(_int("UNIPIC_FAULT_STEP_DELAY_MS") or 0) / 1000.0,
            device_lost_after_steps=_int("UNIPIC_FAULT_DEVICE_LOST_AFTER_STEPS"),
            hold_file=os.environ.get("UNIPIC_FAULT_HOLD_FILE") or None,
            hold_after_steps=_int("UNIPIC_FAULT_HOLD_AFTER_STEPS") or 1,
        )
        if injector.active:
            log.warning("FAULT INJECTION ACTIVE (test only): %s", injector)
        return injector

    @property
    def active(self) -> bool:
        return bool(self.oom_above_items or self.oom_above_pixels or self.step_delay_seconds or self.hold_file
                    or self.device_lost_after_steps is not None)

    def before_model_call(self, items: int, pixels: int) -> None:
        """Raise a simulated out-of-memory error when the call is larger than allowed."""
        too_many = self.oom_above_items is not None and items > self.oom_above_items
        too_big = self.oom_above_pixels is not None and pixels > self.oom_above_pixels
        if too_many or too_big:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected fault: {items} items, {pixels} pixels)"
            )

    def check_device(self) -> None:
        """Raise the device-lost error once the device has been lost."""
        if self._device.lost:
            raise RuntimeError(DEVICE_LOST_MESSAGE)

    def on_step(self) -> None:
        """Slow a sampling step down or hold it; lose the device after the configured number of steps."""
        if self.step_delay_seconds:
            time.sleep(self.step_delay_seconds)
        if self.hold_file is not None and self._held.next() > self.hold_after_steps:
            while not os.path.exists(self.hold_file):  # a test-only wait on a state the test sets
                time.sleep(0.02)
        if self.device_lost_after_steps is not None:
            with self._device.lock:
                self._device.steps += 1
                if self._device.steps > self.device_lost_after_steps:
                    self._device.lost = True
            self.check_device()
