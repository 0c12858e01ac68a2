"""Every GPU measurement of issue 20 in one run; each table is written as JSON under `--out` as it completes.

    python -m bench.gpu_suite --out "$OUT"              # on the GPU: full-size config, random bf16 weights
    python -m bench.gpu_suite --out /tmp/x --dry-run    # on CPU: the tiny model, tiny sizes; checks nothing crashes

Sections (in this order; `--only a,b` picks some, `--budget-s` skips the rest once the time is spent, and a
section that fails records its error and the run goes on):

- `context`: this process's CUDA context, measured (device memory used after creating the context with nothing
  allocated, less what was used before it) -> context.json.
- `throughput`: generate at each size and batch, eager (old) and compiled fast paths (new) side by side:
  s/call, images/s, achieved TFLOP/s (`bench.flops`) and % of the dense bf16 peak -> throughput.json.
- `parts`: per-part time split (LLM, MAR encoder, MAR decoder, head, VAE, host; `bench.parts`) -> parts.json.
- `continuous`: issue 25 on the device: a running set's step time by the items it advances (what
  `UNIPIC_WORKER_STEP_COMPANIONS=auto` measures), whole batches vs a running set on the same staggered arrivals
  (`bench.running_set`: images/s, latency, the share of steps run ragged (packed: no padding FLOPs) and the
  token rows padding would have added; a ragged step's time against an aligned one's) per size, and whole batches vs a decode set for questions (`bench.decode_set`) -> continuous.json.
- `profile`: `torch.profiler` top ops by device time for one image at the largest size -> profile.json.
- `memory`: peak memory per kind, size and batch 1..8, in the format of `workers/device/card_fit_table.json`
  (measured cells, `estimated: false`) -> memory_table.json.
- `cap`: 1024² generate, edit and understand each under an 8 GiB budget, in a child process that first measures
  its own context and then calls `torch.cuda.set_per_process_memory_fraction((8 GiB - context) / total)`
  -> cap_8gib.json.
- `drift`: the tiny model fp32 on CPU vs bf16 (and fp32) on the device, and fast paths vs eager on the device:
  max relative error per image (max |a - b| / 255 over the 8-bit pixels) -> drift.json.

`summary.json` lists every section with its seconds and status. No figure is written that was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

GIB = 2**30
# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by device name fragment
DENSE_BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "4090": 165.0}
SECTIONS = ("context", "throughput", "parts", "continuous", "profile", "memory", "cap", "drift")


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- sections -------------------------------------------------------------------------------------------------
def measure_context(device: str) -> dict[str, Any]:
    """Device memory this process's CUDA context takes (must run before anything else touches the device)."""
    if not device.startswith("cuda"):
        return {"device": device, "context_gib": None, "note": "no CUDA device (dry run)"}
    from workers.device.nvml import Nvml

    before = Nvml().read()
    used_before = before[0].memory_used if before else None
    torch.cuda.init()
    torch.empty(1, device=device)  # creates the context (and the caching allocator's first block)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    used_after = total - free
    context = used_after - reserved - (used_before or 0)
    return {"device": torch.cuda.get_device_name(), "total_gib": total / GIB, "used_before_gib":
            None if used_before is None else used_before / GIB, "used_after_gib": used_after / GIB,
            "allocator_reserved_gib": reserved / GIB, "context_gib": context / GIB,
            "how": "mem_get_info after the first allocation, less allocator reserve, less NVML 'used' before"}


def throughput(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    from bench.flops import achieved_tflops, image_flops
    from bench.model import time_generate  # its warm-up call also compiles, on the fast path
    from model.engine.fast_paths import set_fast_paths

    peak = peak_tflops(a.device)
    rows = []
    for fast in (False, True):
        set_fast_paths(engine.model, fast, static=a.static)
        for size in a.sizes:
            for batch in a.batches:
                t0 = time.perf_counter()
                sec = time_generate(engine, a.device, batch, size, a.steps, a.repeats)
                tf = achieved_tflops(engine.config, size, a.steps, 3.0, batch, sec)
                rows.append({"fast": fast, "size": size, "steps": a.steps, "batch": batch, "seconds": sec,
                             "seconds_per_image": sec / batch, "images_per_s": batch / sec, "achieved_tflops": tf,
                             "percent_of_peak": None if peak is None else 100 * tf / peak,
                             "with_warmup_s": time.perf_counter() - t0})
                print(f"  fast={fast!s:5} {size:5d}px b{batch}: {sec:8.3f} s  {tf:8.2f} TFLOP/s", flush=True)
    set_fast_paths(engine.model, False)
    flops = {s: image_flops(engine.config, s, a.steps, 3.0).as_dict() for s in a.sizes}
    return {"peak_dense_bf16_tflops": peak, "flops_per_image": flops, "rows": rows}


def parts(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    from bench.parts import part_times
    from model.engine.fast_paths import set_fast_paths
    from model.inference import GenerateRequest

    out = []
    size = max(a.sizes)
    for fast in (False, True):
        set_fast_paths(engine.model, fast, static=a.static)
        req = [GenerateRequest("p", "a photo of object number 0", seed=0, size=size, steps=a.steps)]
        engine.generate(req)  # warm-up
        with part_times(engine) as split:
            engine.generate(req)
        out.append({"fast": fast, "size": size, "batch": 1, "steps": a.steps, **split})
    set_fast_paths(engine.model, False)
    return {"rows": out, "note": "device synchronized around each part; totals are a little above plain timing"}


def continuous(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    import random

    from bench import decode_set as asks
    from bench import running_set as images
    from bench.flops import ragged_padding_share
    from model.inference import GenerateRequest

    steps, n, rows = a.continuous_steps, a.continuous_requests, 8
    out: dict[str, Any] = {"steps": steps, "max_items": rows, "step_seconds": [], "ragged_step": [], "images": [],
                           "questions": []}
    for size in a.continuous_sizes:
        aligned, ragged = images.ragged_step_cost(engine, size, steps, rows, repeats=3, sync=lambda: sync(a.device))
        out["ragged_step"].append({"size": size, "aligned_s": aligned, "ragged_s": ragged, "ratio": ragged / aligned,
                                   "padding_share_if_unpacked": ragged_padding_share(engine.config, size, steps, rows)})
        print(f"  {size}px a step of {rows} items at different steps / in one phase: {ragged / aligned:.2f}", flush=True)
        by_rows = {}
        for count in (1, 2, 4, rows):  # every item in phase: no padding, so this is the rows' own cost
            rs = engine.open_set("generate", size)
            rs.admit([GenerateRequest(f"s{i}", "a photo", seed=i, size=size, steps=steps + 2) for i in range(count)])
            rs.step()  # warm: kernels for these shapes
            sync(a.device)
            t0 = time.perf_counter()
            rs.step()
            sync(a.device)
            by_rows[count] = time.perf_counter() - t0
            out["step_seconds"].append({"size": size, "rows": count, "seconds": by_rows[count],
                                        "vs_one_row": by_rows[count] / by_rows[1]})
        rng = random.Random(0)
        reqs = images.workload(n, size, sorted({max(1, steps // 2), steps, steps * 3 // 2}), rng)
        capacity = rows / (by_rows[rows] * steps)  # images/s of full whole batches of `steps` steps
        at = dict(zip([r.id for r in reqs], images.arrivals(n, 0.7 * capacity, rng), strict=True))
        for mode, run in (("whole", images.run_whole), ("continuous", images.run_continuous)):
            result = run(engine, reqs, at, rows)
            out["images"].append({"size": size, "mode": mode, "images_per_s": result.images_per_s,
                                  "p50_s": result.p50, "p95_s": result.p95, "busy": result.busy,
                                  "ragged_steps": result.ragged, "padding_avoided_of_token_rows": result.pad_avoided})
            print(f"  {size}px {mode:10} {result.images_per_s:7.2f} img/s  p50 {result.p50:6.2f} s  "
                  f"ragged steps {100 * result.ragged:5.1f} %  padding avoided {100 * result.pad_avoided:5.1f} %",
                  flush=True)
    size = max(a.continuous_sizes)
    rng = random.Random(0)
    questions = asks.workload(n, size, a.continuous_tokens, rng)
    at = dict(zip([r.id for r in questions], images.arrivals(n, 4 * n, rng), strict=True))  # a backlog
    texts = {}
    for mode, ask in (("whole", asks.run_whole), ("continuous", asks.run_continuous)):
        answered = ask(engine, questions, at, rows)
        texts[mode] = answered.texts
        out["questions"].append({"size": size, "mode": mode, "answers_per_s": answered.answers_per_s,
                                 "tokens_per_s": answered.tokens_per_s, "p50_s": answered.p50, "p95_s": answered.p95,
                                 "padding_of_attention_slots": answered.padding})
    out["answers_that_differ"] = sum(texts["whole"][k] != texts["continuous"][k] for k in texts["whole"])
    return out


def profile(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from model.inference import GenerateRequest

    size, steps = max(a.sizes), min(a.steps, 8)
    req = [GenerateRequest("p", "a photo of object number 0", seed=0, size=size, steps=steps)]
    engine.generate(req)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with torch_profile(activities=acts) as prof:
        engine.generate(req)
        sync(a.device)
    key = "device_time_total" if a.device.startswith("cuda") else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:40]
    return {"size": size, "steps": steps, "sort": key, "top": [
        {"name": e.key, "calls": e.count, "cpu_time_total_us": e.cpu_time_total,
         "device_time_total_us": getattr(e, "device_time_total", None)} for e in events]}


def memory(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    from bench.model import photo
    from model.inference import EditRequest, GenerateRequest, UnderstandRequest

    cuda = a.device.startswith("cuda")
    rows = []
    for kind in ("generate", "edit", "understand"):
        for size in a.memory_sizes:
            for batch in a.memory_batches:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                n = range(batch)
                try:
                    if kind == "generate":
                        engine.generate([GenerateRequest(f"g{i}", "a red fox", seed=i, size=size,
                                                         steps=a.memory_steps) for i in n])
                    elif kind == "edit":
                        engine.edit([EditRequest(f"e{i}", photo(), "make it blue", seed=i, size=size,
                                                 steps=a.memory_steps) for i in n])
                    else:
                        engine.understand([UnderstandRequest(f"u{i}", photo(), "Describe the image.", seed=i,
                                                             size=size, max_new_tokens=32) for i in n])
                    sync(a.device)
                    peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
                    error = None
                except torch.OutOfMemoryError as exc:
                    peak, error = None, f"out of memory: {exc}"[:200]
                rows.append({"kind": kind, "size": size, "batch": batch, "peak_gib": peak, "estimated": False,
                             **({"error": error} if error else {})})
                print(f"  {kind:10s} {size:5d}px b{batch}: peak {peak}", flush=True)
    source = (f"python -m bench.gpu_suite on {torch.cuda.get_device_name() if cuda else a.device}: "
              f"{a.config}, {a.dtype}, {a.memory_steps} MAR steps, CFG 3, torch.cuda.max_memory_allocated")
    return {"source": source, "measured": "every row", "rows": rows}


def cap(_: Any, a: argparse.Namespace) -> dict[str, Any]:
    """Run the 8 GiB-capped child and return what it wrote."""
    out = Path(a.out) / "cap_child.json"
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--cap-child", str(out), "--device", a.device,
           "--cap-gib", str(a.cap_gib), "--steps", str(a.steps)] + (["--dry-run"] if a.dry_run else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=a.cap_timeout_s, check=False)
    result = json.loads(out.read_text()) if out.exists() else {}
    return {**result, "returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}


def cap_child(a: argparse.Namespace) -> None:
    from bench.model import photo
    from model.inference import EditRequest, GenerateRequest, UnderstandRequest

    cuda = a.device.startswith("cuda")
    context = measure_context(a.device)
    report: dict[str, Any] = {"cap_gib": a.cap_gib, "context": context, "runs": []}
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = (a.cap_gib * GIB - context["context_gib"] * GIB) / total
        torch.cuda.set_per_process_memory_fraction(fraction)
        report["memory_fraction"] = fraction
    engine = make_engine(a)
    size, tokens = (64, 8) if a.dry_run else (1024, 64)
    calls: dict[str, Callable[[], Any]] = {
        "generate": lambda: engine.generate([GenerateRequest("g", "a red fox", seed=0, size=size, steps=a.steps)]),
        "edit": lambda: engine.edit([EditRequest("e", photo(), "make it blue", seed=0, size=size, steps=a.steps)]),
        "understand": lambda: engine.understand([UnderstandRequest("u", photo(), "Describe the image.", seed=0,
                                                                   size=size, max_new_tokens=tokens)]),
    }
    for kind, call in calls.items():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            call()
            ok, error = True, None
        except torch.OutOfMemoryError as exc:
            ok, error = False, str(exc)[:300]
        sync(a.device)
        report["runs"].append({"kind": kind, "size": size, "batch": 1, "steps": a.steps, "ok": ok, "error": error,
                               "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
                               "seconds": time.perf_counter() - t0})
    Path(a.cap_child).write_text(json.dumps(report, indent=1))


def drift(engine: Any, a: argparse.Namespace) -> dict[str, Any]:
    from bench.model import make_engine as bench_engine
    from model.engine.fast_paths import set_fast_paths
    from model.inference import GenerateRequest

    def rel(x: list, y: list) -> list[float]:
        return [float(np.abs(np.asarray(i, dtype=np.float32) - np.asarray(j, dtype=np.float32)).max() / 255)
                for rx, ry in zip(x, y, strict=True) for i, j in zip(rx.images, ry.images, strict=True)]

    tiny_reqs = [GenerateRequest(str(i), f"prompt {i}", seed=i, size=64, steps=4) for i in range(3)]
    cpu = bench_engine("tiny", "cpu", "float32", None)
    ref = cpu.generate(tiny_reqs)
    out: dict[str, Any] = {"metric": "max |a - b| / 255 per image (8-bit pixels)"}
    if a.device.startswith("cuda"):
        for dtype in ("float32", "bfloat16"):
            dev = bench_engine("tiny", a.device, dtype, None)
            out[f"tiny_cpu_fp32_vs_{a.device}_{dtype}"] = rel(ref, dev.generate(tiny_reqs))
    size = min(a.sizes)
    reqs = [GenerateRequest(str(i), f"prompt {i}", seed=i, size=size, steps=a.steps) for i in range(2)]
    set_fast_paths(engine.model, False)
    eager = engine.generate(reqs)
    set_fast_paths(engine.model, True, static=a.static)
    fast = engine.generate(reqs)
    set_fast_paths(engine.model, False)
    out[f"{a.config}_{a.dtype}_fast_vs_eager_{size}px"] = rel(eager, fast)
    return out


# ---- driver ---------------------------------------------------------------------------------------------------
def make_engine(a: argparse.Namespace) -> Any:
    from bench.model import make_engine as bench_engine

    source = "tiny" if a.config == "tiny" else f"random:{a.config}"
    return bench_engine(source, a.device, a.dtype, a.tokenizer_dir)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, tiny sizes: checks the script runs")
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip sections once this much time is spent")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--memory-sizes", default="256,512,1024")
    ap.add_argument("--memory-batches", default="1,2,4,8")
    ap.add_argument("--memory-steps", type=int, default=4, help="peak memory does not grow with steps")
    ap.add_argument("--cap-gib", type=float, default=8.0)
    ap.add_argument("--cap-timeout-s", type=float, default=240.0)
    ap.add_argument("--static", action="store_true",
                    help="fast paths as one static graph per (size, step, rows) bucket (many compiles)")
    ap.add_argument("--continuous-sizes", default="256,1024")
    ap.add_argument("--continuous-steps", type=int, default=8)
    ap.add_argument("--continuous-requests", type=int, default=16)
    ap.add_argument("--continuous-tokens", default="16,64", help="question token limits drawn per request")
    ap.add_argument("--tokenizer-dir", default=None)
    ap.add_argument("--cap-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.dry_run:
        a.device, a.steps, a.repeats = "cpu", 2, 1
        a.sizes, a.batches, a.memory_sizes, a.memory_batches = "64", "1,2", "64", "1,2"
        a.memory_steps, a.cap_gib = 2, 8.0
        a.continuous_sizes, a.continuous_steps, a.continuous_requests, a.continuous_tokens = "64", 2, 6, "4,8"
    a.config = "tiny" if a.dry_run else "unipic-1.5b"
    a.dtype = "float32" if a.dry_run else "bfloat16"
    for name in ("sizes", "batches", "memory_sizes", "memory_batches", "continuous_sizes", "continuous_tokens"):
        setattr(a, name, [int(x) for x in str(getattr(a, name)).split(",")])
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    if a.cap_child:
        cap_child(a)
        return {}
    if a.dry_run:
        torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SECTIONS if s in a.only.split(",")]
    started = time.perf_counter()
    summary: dict[str, Any] = {"device": a.device, "config": a.config, "dtype": a.dtype, "sections": {}}

    def record(name: str, fn: Callable[[], dict[str, Any]], filename: str) -> None:
        if name not in wanted:
            return
        spent = time.perf_counter() - started
        if spent > a.budget_s:
            summary["sections"][name] = {"status": "skipped", "why": f"budget spent ({spent:.0f} s)"}
            return
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
            (out / filename).write_text(json.dumps(result, indent=1, default=str))
            summary["sections"][name] = {"status": "ok", "seconds": time.perf_counter() - t0, "file": filename}
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the other tables
            traceback.print_exc()
            summary["sections"][name] = {"status": "failed", "seconds": time.perf_counter() - t0,
                                         "error": f"{type(exc).__name__}: {exc}"[:500]}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))

    record("context", lambda: measure_context(a.device), "context.json")  # before anything touches the device
    engine = make_engine(a) if set(wanted) - {"context", "cap"} else None  # the capped child loads its own
    record("throughput", lambda: throughput(engine, a), "throughput.json")
    record("parts", lambda: parts(engine, a), "parts.json")
    record("continuous", lambda: continuous(engine, a), "continuous.json")
    record("profile", lambda: profile(engine, a), "profile.json")
    record("memory", lambda: memory(engine, a), "memory_table.json")
    if "cap" in wanted and a.device.startswith("cuda"):
        del engine  # the capped child needs the device to itself
        torch.cuda.empty_cache()
        engine = None
    record("cap", lambda: cap(engine, a), "cap_8gib.json")
    if engine is None and "drift" in wanted:
        engine = make_engine(a)
    record("drift", lambda: drift(engine, a), "drift.json")
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["sections"], indent=1))
    return summary


if __name__ == "__main__":
    main()
