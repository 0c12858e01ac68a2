"""Out-of-memory handling: recognizing it and splitting a batch in halves.

The design's rule: a batch that runs out of memory is split in halves and each half retried; a single item
that still does not fit fails with `out_of_memory`; the worker stays alive. This module holds only the pure
parts (classification and splitting) so they are unit-tested without a GPU; it imports torch lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from storage.states import JobErrorCode

T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    """True for `torch.OutOfMemoryError` and for runtime errors whose message says out of memory."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is present wherever a model runs
        pass
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "failed to allocate" in text
    return False


def failure_code(exc: BaseException) -> JobErrorCode:
    """The error code of an item whose model call failed on its own: out of memory, or any other model error."""
    return JobErrorCode.OUT_OF_MEMORY if is_oom(exc) else JobErrorCode.MODEL_ERROR


def halves(items: Sequence[T]) -> list[list[T]]:
    """Split a batch of two or more items into two non-empty halves (the first one the larger)."""
    if len(items) < 2:
        raise ValueError("a single item cannot be split")
    middle = (len(items) + 1) // 2
    return [list(items[:middle]), list(items[middle:])]


def release_cached_memory() -> None:
    """Give cached accelerator memory back after an OOM so the retry starts clean."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
