"""Out-of-memory classification and the halving rule."""

from __future__ import annotations

import pytest
import torch

from workers.faults import FaultInjector
from workers.runner.oom import halves, is_oom


def test_recognizes_torch_oom_and_runtime_messages() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only runtime errors carry allocator messages


@pytest.mark.parametrize("n", [2, 3, 7, 8])
def test_halves_cover_every_item_once(n: int) -> None:
    items = list(range(n))
    first, second = halves(items)
    assert first and second
    assert first + second == items
    assert len(first) - len(second) in (0, 1)


def test_a_single_item_cannot_be_split() -> None:
    with pytest.raises(ValueError):
        halves([1])


def test_fault_injector_raises_oom_only_above_its_thresholds() -> None:
    injector = FaultInjector(oom_above_items=1, oom_above_pixels=64 * 64)
    injector.before_model_call(1, 64 * 64)
    with pytest.raises(torch.OutOfMemoryError):
        injector.before_model_call(2, 64 * 64)
    with pytest.raises(torch.OutOfMemoryError) as caught:
        injector.before_model_call(1, 128 * 128)
    assert is_oom(caught.value)
    FaultInjector().before_model_call(64, 10**9)  # off by default
