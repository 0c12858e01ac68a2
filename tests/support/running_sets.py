"""Driving a running set (image) or decode set (understand) the way the determinism tests do: items joining at their
arrival steps and advancing in random subsets, or one item alone."""

from __future__ import annotations

import random


def run_staggered(engine, kind: str, size: int, requests: list, arrive: dict[str, int], rng: random.Random) -> dict:
    """Admit each request at its arrival step; each step advances a random non-empty subset (or all)."""
    rs = engine.open_set(kind, size)
    done, t = {}, 0
    while len(done) < len(requests):
        rs.admit([r for r in requests if arrive[r.id] == t])
        live = rs.ids
        chosen = None if not live or rng.random() < 0.3 else set(rng.sample(live, rng.randint(1, len(live))))
        done.update({f.id: f for f in rs.step(chosen)})
        t += 1
    assert not rs.items
    return done


def run_alone(engine, kind: str, request):
    rs = engine.open_set(kind, request.size)
    rs.admit([request])
    finished = []
    while rs.items:
        finished += rs.step()
    (only,) = finished
    return only


class WrappedSets:
    """An engine whose running sets come wrapped (`wrap(set)`, a `Forwarded` subclass that overrides the calls a
    test watches or holds); every other attribute is the engine's."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def open_set(self, kind: str, size: int):
        return self.wrap(self.inner.open_set(kind, size))

    def wrap(self, rs):
        raise NotImplementedError

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class Forwarded:
    """A running set whose calls go to `inner` unless overridden; `engine` is the `WrappedSets` that made it."""

    def __init__(self, inner, engine: WrappedSets) -> None:
        self.inner, self.engine = inner, engine

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class ActsDuringSteps(WrappedSets):
    """Runs `actions[n]()` inside the sets' `n`-th step (1-based, across sets); logs each step's ids."""

    def __init__(self, inner, actions) -> None:
        super().__init__(inner)
        self.actions, self.steps = actions, list[set[str]]()

    def wrap(self, rs):
        return _ActingSet(rs, self)


class CancelsDuringAStep(ActsDuringSteps):
    """Runs `cancel()` inside the set's second step; logs each step's ids."""

    def __init__(self, inner, cancel) -> None:
        super().__init__(inner, {2: cancel})


class _ActingSet(Forwarded):
    def step(self, ids=None, **options):
        self.engine.steps.append(set(ids if ids is not None else self.inner.ids))
        action = self.engine.actions.get(len(self.engine.steps))
        if action is not None:
            action()
        return self.inner.step(ids, **options)
