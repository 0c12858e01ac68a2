"""The engine with its model calls timed, for the worker benches (`bench.pipeline`, `bench.cancel`).

`TimedEngine` records the wall time of every model call in `calls`: whole calls (`generate/edit/understand`)
and, for the continuous runner, each running set's `admit` (conditioning runs the model) and `step`. Running
sets also log what happened to which items (`events`: admit, step, drop, with the live ids), so a bench can
count the steps between a request and an item leaving its set. Every other attribute is forwarded unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SetEvent:
    """One call on a running set: what, when (perf_counter), the ids it named, the ids live when it began."""

    what: str  # "admit" | "step" | "decode" | "drop"
    start: float
    end: float
    ids: tuple[str, ...]
    live: tuple[str, ...]


@dataclass
class TimedEngine:
    """The engine, with the wall time of each model call recorded (bench only)."""

    inner: Any
    calls: list[tuple[float, float]] = field(default_factory=list)
    events: list[SetEvent] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    @property
    def revision(self) -> str:
        return str(self.inner.revision)

    def timed(self, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.calls.append((start, time.perf_counter()))

    def _whole(self, method: str, requests: list, progress: Any, should_cancel: Any) -> list:
        run = getattr(self.inner, method)
        return self.timed(lambda: list(run(requests, progress=progress, should_cancel=should_cancel)))

    def generate(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list:
        return self._whole("generate", requests, progress, should_cancel)

    def edit(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list:
        return self._whole("edit", requests, progress, should_cancel)

    def understand(self, requests: list, progress: Any = None, should_cancel: Any = None) -> list:
        return self._whole("understand", requests, progress, should_cancel)

    def open_set(self, kind: str, size: int) -> TimedSet:
        return TimedSet(self.inner.open_set(kind, size), self)

    def clear(self) -> None:
        self.calls.clear()
        self.events.clear()

    def steps(self) -> int:
        """Step calls so far (every set)."""
        return sum(1 for e in list(self.events) if e.what == "step")


class TimedSet:
    """A running set whose `admit` and `step` are model calls on its engine's clock; `drop` is logged too."""

    def __init__(self, inner: Any, engine: TimedEngine) -> None:
        self._inner, self._engine = inner, engine

    def _logged(self, what: str, ids: Collection[str], call: Callable[[], T], model: bool) -> T:
        live = tuple(self._inner.ids)
        start = time.perf_counter()
        try:
            return self._engine.timed(call) if model else call()
        finally:
            self._engine.events.append(SetEvent(what, start, time.perf_counter(), tuple(ids), live))

    def admit(self, requests: list) -> None:
        self._logged("admit", [r.id for r in requests], lambda: self._inner.admit(requests), model=True)

    def step(self, ids: Collection[str] | None = None, **options: Any) -> list:
        named = self._inner.ids if ids is None else ids
        return list(self._logged("step", named, lambda: self._inner.step(ids, **options), model=True))

    def decode(self, finished: Any) -> Any:
        return self._logged("decode", [finished.id], lambda: self._inner.decode(finished), model=True)

    def drop(self, ids: Collection[str]) -> list[str]:
        return list(self._logged("drop", ids, lambda: self._inner.drop(ids), model=False))

    def __getattr__(self, name: str) -> Any:  # items, ids, progress(), rows, stats, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)
