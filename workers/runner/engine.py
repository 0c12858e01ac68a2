"""The model engine as the worker sees it: one typed method per job kind, and the one call a batch makes.

`Engine` is the seam between the batch runner and `model.inference.UniPicEngine` (which satisfies it
structurally; tests and benchmarks may pass anything that does). `run_model` dispatches a batch's requests,
which always share one kind, to the method for that kind by the requests' type. It knows nothing of jobs,
leases or storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from model.inference import (
    CancelFn,
    EditRequest,
    GenerateRequest,
    ImageResult,
    ProgressFn,
    TextResult,
    UnderstandRequest,
)

ModelRequest = GenerateRequest | EditRequest | UnderstandRequest
ModelResult = ImageResult | TextResult
R = TypeVar("R", GenerateRequest, EditRequest, UnderstandRequest)


class Engine(Protocol):
    """A loaded model: what the worker calls, one method per job kind."""

    @property
    def model_id(self) -> str: ...

    @property
    def revision(self) -> str: ...

    def generate(self, requests: list[GenerateRequest], progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> list[ImageResult]: ...

    def edit(self, requests: list[EditRequest], progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> list[ImageResult]: ...

    def understand(self, requests: list[UnderstandRequest], progress: ProgressFn | None = None,
                   should_cancel: CancelFn | None = None) -> list[TextResult]: ...


def run_model(engine: Engine, requests: Sequence[ModelRequest], progress: ProgressFn,
              should_cancel: CancelFn) -> list[ImageResult] | list[TextResult]:
    """One engine call over requests of a single kind; `ValueError` if they mix kinds."""
    first = requests[0]
    if isinstance(first, GenerateRequest):
        return engine.generate(_all_of(GenerateRequest, requests), progress=progress, should_cancel=should_cancel)
    if isinstance(first, EditRequest):
        return engine.edit(_all_of(EditRequest, requests), progress=progress, should_cancel=should_cancel)
    return engine.understand(_all_of(UnderstandRequest, requests), progress=progress, should_cancel=should_cancel)


def _all_of(kind: type[R], requests: Sequence[ModelRequest]) -> list[R]:
    same = [r for r in requests if isinstance(r, kind)]
    if len(same) != len(requests):
        raise ValueError(f"one model call mixes {kind.__name__} with other request kinds")
    return same
