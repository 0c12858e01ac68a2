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
