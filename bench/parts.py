"""Per-part wall time of engine calls: LLM, MAR encoder, MAR decoder, diffusion head, VAE, and host (the rest).

Owns the timing hooks the model benchmarks install on one engine instance (never on the classes): each part's
entry point is wrapped to synchronize the device and add its wall time to a counter. Synchronizing costs a
little on a GPU, so totals measured with parts on are reported apart from the plain throughput figures.
Bench-only; the engine and the sampler know nothing of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

PARTS = ("llm", "mar_encoder", "mar_decoder", "head", "vae", "host")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def part_times(engine: Any) -> Iterator[dict[str, float]]:
    """Inside the block, engine calls add seconds per part to the yielded dict ('host' is filled at exit from
    the total time of the block minus the parts)."""
    totals = {p: 0.0 for p in PARTS}
    model, device = engine.model, engine.device
    targets: list[tuple[Any, str, str]] = [
        (engine.runner, "extend_rows", "llm"), (engine.runner, "chunk", "llm"), (engine.runner, "prefix", "llm"),
        (model.mar, "encode", "mar_encoder"),
        (model.mar, "decode", "mar_decoder"), (engine.sampler, "sample_head", "head"),
        (model.vae, "decode_tokens", "vae"), (model.vae, "encode_tokens", "vae"),
    ]

    def wrap(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(device)
                totals[part] += time.perf_counter() - t0

        return timed

    for obj, name, part in targets:
        setattr(obj, name, wrap(getattr(obj, name), part))
    _sync(device)
    started = time.perf_counter()
    try:
        yield totals
    finally:
        _sync(device)
        wall = time.perf_counter() - started
        for obj, name, _ in targets:
            delattr(obj, name)  # back to the class's method
        totals["host"] = max(0.0, wall - sum(v for k, v in totals.items() if k != "host"))
        totals["total"] = wall
