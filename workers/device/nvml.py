"""Nvml: GPU memory and utilization from NVIDIA's management library (`nvidia-ml-py`), when there is one.

Owns the guarded import and the one-time `nvmlInit`: without the package, without a driver (a CPU machine, a
container without GPUs) or after any NVML error it reports no GPUs and logs why once at debug. It knows
nothing of Prometheus (`workers.metrics` turns readings into gauges) nor of PyTorch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    memory_used: int
    memory_total: int
    utilization: float  # 0..1


class Nvml:
    """Reads every visible GPU (CUDA_VISIBLE_DEVICES respected when it lists indices)."""

    def __init__(self) -> None:
        self._lib: Any = None
        self._failed = False

    def _init(self) -> Any:
        if self._lib is None and not self._failed:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._lib = pynvml
            except Exception as exc:  # noqa: BLE001 - no package, no driver, no device: no GPU metrics
                self._failed = True
                log.debug("NVML unavailable, no GPU metrics: %s", exc)
        return self._lib

    def read(self) -> list[GpuReading]:
        lib = self._init()
        if lib is None:
            return []
        try:
            return [self._one(lib, index) for index in self._indices(lib)]
        except Exception as exc:  # noqa: BLE001 - a GPU fell off the bus: report none rather than fail a scrape
            log.warning("NVML read failed: %s", exc)
            return []

    @staticmethod
    def _indices(lib: Any) -> list[int]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if visible and all(part.strip().isdigit() for part in visible.split(",")):
            return [int(part) for part in visible.split(",")]
        return list(range(lib.nvmlDeviceGetCount()))

    @staticmethod
    def _one(lib: Any, index: int) -> GpuReading:
        handle = lib.nvmlDeviceGetHandleByIndex(index)
        memory = lib.nvmlDeviceGetMemoryInfo(handle)
        rates = lib.nvmlDeviceGetUtilizationRates(handle)
        return GpuReading(index, int(memory.used), int(memory.total), float(rates.gpu) / 100.0)
