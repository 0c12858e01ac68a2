"""Telling a broken device from a failing item, and ending the process when the device is broken.

Owns: `DeviceFatal` (the device itself failed: lost, or its CUDA context is unusable), the classifier
`is_device_fatal`, the one-item warm-up probe (`probe_request`), and `GuardedEngine`, which wraps the engine so
that every model call is judged: out-of-memory passes through (the batch runner splits the batch); a device
error becomes `DeviceFatal`; an unexplained error on a single item triggers the warm-up probe, and when the
probe fails too (`PROBE_TRIES` times) the device is declared broken. `DeviceFatal` derives from BaseException,
so the batch runner's per-item handling (`except Exception`) never mistakes it for an item's failure.

It knows nothing of jobs, claims or Celery: the runtime releases the claims and ends the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from workers.runner.oom import is_oom

if TYPE_CHECKING:  # the model (and torch) load only in a worker process that runs it
    from model import inference as mi
    from workers.runner.engine import Engine

T = TypeVar("T")

log = logging.getLogger(__name__)

PROBE_TRIES = 2
PROBE_ID = "warm-up"
# substrings (lower case) of errors after which a CUDA context or the device cannot be trusted again
FATAL_MARKERS = (
    "illegal memory access", "device-side assert", "unspecified launch failure", "uncorrectable ecc",
    "gpu is lost", "fallen off the bus", "device lost", "no cuda-capable device", "launch timed out",
    "misaligned address", "illegal instruction", "cuda driver version is insufficient", "devices unavailable",
    "busy or unavailable", "hardware stop", "cudnn_status_execution_failed", "cublas_status_execution_failed",
    "nvml", "cuda error: unknown error",
)


class DeviceFatal(BaseException):
    """The device is broken; the process must release its work and exit (`reason` says what happened)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_device_fatal(exc: BaseException) -> bool:
    """True for errors that leave the device or its CUDA context unusable (never for out of memory)."""
    if is_oom(exc):
        return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in FATAL_MARKERS)


def probe_request(sizes: Sequence[int], max_pixels: int) -> mi.GenerateRequest:
    """The warm-up probe: one image at the smallest served size, one sampling step."""
    from model.inference import GenerateRequest

    fitting = [s for s in sizes if s * s <= max_pixels] or list(sizes)
    return GenerateRequest(id=PROBE_ID, prompt="warm-up", seed=0, size=min(fitting), num_images=1, steps=1)


class GuardedEngine:
    """The engine, with every model call judged as device-fatal or not (see the module docstring)."""

    def __init__(self, engine: Engine, probe: mi.GenerateRequest,
                 check_device: Callable[[], None] = lambda: None) -> None:
        self._engine = engine
        self._probe_request = probe
        self._check_device = check_device
        self._lock = threading.Lock()
        self.calls_ok = 0
        self.calls_failed = 0
        self.last_error: str | None = None

    def __getattr__(self, name: str) -> Any:  # config, device, ... of the wrapped engine
        return getattr(self._engine, name)

    @property
    def model_id(self) -> str:
        return self._engine.model_id

    @property
    def revision(self) -> str:
        return self._engine.revision

    def generate(self, requests: list[mi.GenerateRequest], progress: mi.ProgressFn | None = None,
                 should_cancel: mi.CancelFn | None = None) -> list[mi.ImageResult]:
        return self._call(lambda: self._engine.generate(requests, progress, should_cancel), len(requests))

    def edit(self, requests: list[mi.EditRequest], progress: mi.ProgressFn | None = None,
             should_cancel: mi.CancelFn | None = None) -> list[mi.ImageResult]:
        return self._call(lambda: self._engine.edit(requests, progress, should_cancel), len(requests))

    def understand(self, requests: list[mi.UnderstandRequest], progress: mi.ProgressFn | None = None,
                   should_cancel: mi.CancelFn | None = None) -> list[mi.TextResult]:
        return self._call(lambda: self._engine.understand(requests, progress, should_cancel), len(requests))

    def warm_up(self) -> None:
        """Run the one-item probe; raises what the engine raises."""
        self._check_device()
        self._engine.generate([self._probe_request])

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.calls_ok, self.calls_failed

    def guard(self, call: Callable[[], T], items: int) -> T:
        """Judge any other model call (a running set's step) like the three above."""
        return self._call(call, items)

    def _call(self, call: Callable[[], T], items: int) -> T:
        try:
            self._check_device()
            results = call()
        except Exception as exc:
            with self._lock:
                self.calls_failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._judge(exc, items)
            raise
        with self._lock:
            self.calls_ok += 1
        return results

    def _judge(self, exc: Exception, items: int) -> None:
        if is_oom(exc):
            return
        if is_device_fatal(exc):
            raise DeviceFatal(f"the device failed: {type(exc).__name__}: {exc}") from exc
        if items == 1:
            self._probe_after(exc)

    def _probe_after(self, exc: Exception) -> None:
        """An unexplained error on one item: the item's fault if the probe passes, the device's if it fails."""
        failure: BaseException | None = None
        for attempt in range(1, PROBE_TRIES + 1):
            try:
                self.warm_up()
                log.info("warm-up probe passed after %s: the item's own failure", type(exc).__name__)
                return
            except Exception as probe_exc:  # noqa: BLE001 - any failure of the probe counts against the device
                failure = probe_exc
                log.warning("warm-up probe %d/%d failed after %r: %r", attempt, PROBE_TRIES, exc, probe_exc)
                if is_device_fatal(probe_exc):
                    break
        raise DeviceFatal(
            f"the one-item warm-up probe failed after an unexplained error ({type(exc).__name__}: {exc}): "
            f"{type(failure).__name__}: {failure}"
        ) from exc
