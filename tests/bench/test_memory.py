"""bench.memory's meta-tensor account agrees with what PyTorch's CPU allocator really allocates for the tiny model.

The real run is profiled with `profile_memory=True`: every allocation and free of the CPU allocator, in order, so
its running sum's peak is the allocator's own peak above the weights. The account runs the same requests on a
meta-device model (no storage at all). Both must see more than the weights' worth of activations (256 px makes
the VAE decoder's feature maps tens of MiB), so a tracker that counted nothing, or only the weights, fails.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench.memory import account, meta_engine, requests, weight_bytes
from model.config import TINY
from model.inference import load_engine

MIB = 2**20
SIZE, STEPS = 256, 4


def allocator_peak(run: Callable[[], object]) -> int:
    """Peak of the CPU allocator's live bytes above what was live when `run` started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if str(e.device_type()) == "DeviceType.CPU":
            live += e.nbytes()
            peak = max(peak, live)
    return peak


@pytest.mark.parametrize("kind", ["generate", "edit"])
def test_meta_account_matches_the_cpu_allocator(kind: str) -> None:
    torch.set_num_threads(1)
    engine = load_engine("tiny")
    real = allocator_peak(lambda: getattr(engine, kind)(requests(kind, SIZE, 1, STEPS)))

    meta = meta_engine(TINY, torch.float32)
    tracker = account(meta, kind, SIZE, 1, STEPS)
    weights = sum(weight_bytes(meta.model).values())
    accounted = tracker.peak - weights

    assert real > 16 * MIB  # the decoder's 256² feature maps: far above rounding and host-side noise
    assert accounted == pytest.approx(real, rel=0.03)
    assert weights == pytest.approx(sum(p.numel() * 4 for p in engine.model.parameters()), rel=0.01)
    assert set(tracker.phases) >= {"prefill", "mar step", "diffusion head", "vae decode", "png"}
    assert max(tracker.phases.values()) == tracker.peak
