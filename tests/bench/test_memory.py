"""bench.memory's meta-tensor account agrees with what PyTorch's CPU allocator really allocates for the tiny model.

The real run is profiled with `profile_memory=True`: every allocation and free of the CPU allocator, in order, so
its running sum's peak is the allocator's own peak above the weights. The account runs the same requests on a
meta-device model (no storage at all). Both must see more than the weights' worth of activations (256 px makes
the VAE decoder's feature maps tens of MiB), so a tracker that counted nothing, or only the weights, fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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


def test_write_table_fills_only_cells_without_a_gpu_measurement(tmp_path: Path) -> None:
    from bench.memory import GIB, write_table
    from workers.device.card_fit import MemoryTable

    rows = [{"kind": "edit", "size": 1024, "batch": 1, "peak_gib": 7.05, "estimated": False},
            {"kind": "edit", "size": 1024, "batch": 2, "peak_gib": 9.09, "estimated": True},
            {"kind": "edit", "size": 512, "batch": 2, "peak_gib": 5.97, "estimated": True}]
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"source": "test", "rows": rows}))
    write_table([{"kind": "edit", "size": 1024, "batch": 1, "peak": int(6.0 * GIB)},
                 {"kind": "edit", "size": 1024, "batch": 2, "peak": int(7.0 * GIB)}], path)
    table = MemoryTable.model_validate(json.loads(path.read_text()))
    by = {(r.size, r.batch): r for r in table.rows}
    assert (by[1024, 1].peak_gib, by[1024, 1].basis, by[1024, 1].estimated) == (7.05, "measured", False)
    assert (by[1024, 2].peak_gib, by[1024, 2].basis, by[1024, 2].estimated) == (8.05, "cpu-accounted", True)
    assert (by[512, 2].peak_gib, by[512, 2].basis) == (5.97, "estimated")  # nothing accounted: left as it was


def test_cut_switches_and_the_int8_weights() -> None:
    # `--cuts` turns issue 26's cuts off one by one on the same meta engine: holding the step-sized K/V copy the
    # old layout made must cost the MAR steps more than reading each item's prefix where it is, and the int8 LLM holds its
    # decoder linears in half the bytes (per-channel scales aside), the 1.5 B model's weights under 3.6 GiB
    from bench.memory import CUTS, GIB, cuts_applied
    from model.config import get_config

    meta = meta_engine(TINY, torch.float32)
    with cuts_applied(meta, set(CUTS), SIZE):
        now = account(meta, "generate", SIZE, 1, STEPS).phases["mar step"]
    with cuts_applied(meta, set(CUTS) - {"no step K/V copy"}, SIZE):
        copied = account(meta, "generate", SIZE, 1, STEPS).phases["mar step"]
    assert copied > now
    assert meta.runner.mlp_rows is not None and meta.row_passes == {}  # switches restored

    full, int8 = (weight_bytes(meta_engine(get_config("unipic-1.5b"), int8=q).model) for q in (False, True))
    assert full["llm"] / GIB == pytest.approx(2.875, abs=0.01)
    assert int8["llm"] / GIB == pytest.approx(2.875 - 2.44 / 2, abs=0.02)
    assert sum(int8.values()) / GIB < 3.6


def test_write_table_replaces_measurements_of_the_code_before_the_cuts(tmp_path: Path) -> None:
    # issue 26: the GPU measured the code before the cuts; given the account of that code (`before`), the gap is
    # taken against it, the measured cell gets the account of today's code plus that gap (the measurement kept
    # beside it), and two-pass rows are added with the same gap
    from bench.memory import GIB, write_table
    from workers.device.card_fit import MemoryTable

    rows = [{"kind": "edit", "size": 1024, "batch": 1, "peak_gib": 7.05, "estimated": False},
            {"kind": "edit", "size": 1024, "batch": 2, "peak_gib": 9.09, "estimated": True}]
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"source": "test", "rows": rows}))
    write_table([{"kind": "edit", "size": 1024, "batch": 1, "peak": int(5.5 * GIB)},
                 {"kind": "edit", "size": 1024, "batch": 2, "peak": int(6.0 * GIB)},
                 {"kind": "edit", "size": 1024, "batch": 1, "passes": 2, "peak": int(5.25 * GIB)}],
                path, before={("edit", 1024): int(6.5 * GIB)})
    table = MemoryTable.model_validate(json.loads(path.read_text()))
    assert table.peak("edit", 1024, 1) == 6.05 and table.peak("edit", 1024, 2) == 6.55
    assert table.peak("edit", 1024, 1, passes=2) == 5.8
    raw = {(r["batch"], r.get("passes", 1)): r for r in json.loads(path.read_text())["rows"]}
    assert (raw[1, 1]["basis"], raw[1, 1]["measured_gib"]) == ("cpu-accounted", 7.05)
