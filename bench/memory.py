"""Device memory account without a GPU: peak bytes per phase of the real engine, run on meta tensors.

`python -m bench.memory` builds the full-size model on the `meta` device (shapes and dtypes, no storage: nothing
of its 1.5 B weights is allocated), runs the real `RunningSet` (admit, every MAR step, decode) for generate and
edit at 256/512/1024 px, batch 1-4, in bf16, and counts every tensor storage the engine creates through a
`TorchDispatchMode` (`LiveBytes`): a storage counts from the op that creates it until Python frees it, rounded up
to the CUDA caching allocator's 512-byte blocks, so the peak reads like `torch.cuda.max_memory_allocated`.
It prints weights by component and, per phase (text prefill, edit image encode, MAR steps, diffusion head, VAE
decode, PNG conversion), the live bytes at the phase's peak; `--write-table` puts the totals into
`workers/device/card_fit_table.json` as `cpu-accounted` rows wherever no GPU measurement exists.

`--cuts` prints issue 26's memory cuts one by one at 1024 px, batch 1 and 2 (cumulative, each row with its
saving): the VAE decoder and encoder in bands, each MAR step reading the items' prefix K/V where they are held
(before: copied into one (R, T+P+L) buffer per layer, emulated here by holding that buffer), the LLM MLP in
slices of rows, CFG rows in two passes, and the opt-in int8 LLM. `--drift` prints the int8 mode's drift
against fp32 and bf16 on the tiny model's parity inputs (CPU).

What a meta run cannot see, so a GPU measurement still replaces it: the CUDA context and cuBLAS workspaces
(card fit reserves them apart), allocator fragmentation (card fit's margin), the diffusion head's CUDA-graph pool
(run eager here), and which attention kernel CUDA picks: every `scaled_dot_product_attention` is counted as a
fused kernel (output plus a float32 log-sum-exp per query, no score matrix), as CUDA runs bf16 attention.
Two values a meta tensor does not hold are supplied: `.item()` (only the largest RoPE position) returns the
largest position the set can reach, and a boolean-mask write (the edit prompt's `<image>` slots) writes in place.
"""

from __future__ import annotations

import argparse
import json
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from model import vae
from model.checkpoint import LoadedModel, build_empty
from model.config import UniPicConfig, get_config
from model.diffusion import DiffusionSchedule
from model.engine import running_set
from model.inference import EditRequest, GenerateRequest, UniPicEngine, load_engine
from model.llm import quantize_int8
from model.prompts import load_tokenizer
from model.unipic import UniPic

GIB = 2**30
BLOCK = 512  # the CUDA caching allocator rounds every block up to 512 bytes
TABLE = Path(__file__).resolve().parents[1] / "workers" / "device" / "card_fit_table.json"
PHASES = ("prefill", "edit encode", "mar step", "diffusion head", "vae decode", "png")


def rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


@dataclass
class LiveBytes(TorchDispatchMode):
    """Sums the storages of `device` created by dispatched ops while they are alive; peak overall and per phase.

    A phase's entry is the bytes live at its peak (everything: weights, state other phases keep, its own
    transients). `phase(name)` nests; the innermost phase takes the bytes."""

    device: str = "meta"
    base: int = 0  # bytes live before tracking began (the weights)
    scalar: int = 0  # what `.item()` on a meta tensor returns
    live: int = 0
    peak: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)
    _seen: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        self.live = self.peak = self.base

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type != self.device:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        size = rounded(storage.nbytes())
        self._seen[key] = size
        weakref.finalize(storage, self._free, key)
        self.live += size
        self.peak = max(self.peak, self.live)
        if self._stack:
            name = self._stack[-1]
            self.phases[name] = max(self.phases.get(name, 0), self.live)

    def _free(self, key: int) -> None:
        self.live -= self._seen.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        on_meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in flat)
        if on_meta and func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            return self.scalar
        if on_meta and func is torch.ops.aten.index_put_.default and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            return args[0]  # boolean-mask write in place: no new storage
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._stack.append(name)
        self.phases[name] = max(self.phases.get(name, 0), self.live)
        try:
            yield
        finally:
            self._stack.pop()


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> torch.Tensor:
    """What a fused CUDA attention kernel allocates: the output and a float32 log-sum-exp per query row."""
    del attn_mask, dropout_p, is_causal, scale, enable_gqa
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # (..., Q)
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    del lse
    return out


def weight_bytes(model: UniPic) -> dict[str, int]:
    """Parameter and buffer bytes per top-level component (shared storages counted once, where first met)."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    parts = [("mar.diffloss", model.mar.diffloss), ("mar", model.mar), ("llm", model.llm), ("vae", model.vae),
             ("proj_in", model.proj_in), ("proj_out", model.proj_out)]
    if hasattr(model, "siglip2"):
        parts += [("siglip2", model.siglip2), ("siglip2_proj", model.siglip2_proj)]
    for name, module in parts:
        total = 0
        for t in [*module.parameters(), *module.buffers()]:
            key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += rounded(t.numel() * t.element_size())
        out[name] = total
    return out


def meta_engine(cfg: UniPicConfig, dtype: torch.dtype = torch.bfloat16, head_steps: int | None = None,
                int8: bool = False) -> UniPicEngine:
    """The engine over a meta-device model; `head_steps` shortens the diffusion head's reverse loop (every pass
    allocates alike, so only the (K-1, N, C) noise draws shrink with it) to keep the full-size runs short."""
    model = build_empty(cfg, torch.device("meta"), dtype)
    if int8:
        quantize_int8(model.llm)
    loaded = LoadedModel(model, cfg, None, f"meta:{cfg.name}", "meta", cfg.repetition_penalty)
    tok = load_tokenizer(None, cfg.llm.vocab_size)
    engine = UniPicEngine(loaded, tok, torch.device("meta"), dtype, cuda_graphs=False)
    if head_steps is not None:
        d = cfg.diffloss
        engine.sampler.schedule = DiffusionSchedule.create(d.num_train_steps, str(head_steps), d.max_beta)
    return engine


def requests(kind: str, size: int, batch: int, steps: int) -> list[Any]:
    if kind == "generate":
        return [GenerateRequest(f"g{i}", "a red fox in the snow", seed=i, size=size, steps=steps) for i in range(batch)]
    image = Image.new("RGB", (size, size), (90, 120, 200))
    return [EditRequest(f"e{i}", image, "make it blue", seed=i, size=size, steps=steps) for i in range(batch)]


@contextmanager
def phases_of(engine: UniPicEngine, tracker: LiveBytes, to_pil: Callable[[torch.Tensor], list[Image.Image]]
              ) -> Iterator[None]:
    """Label the engine's calls with phases; `to_pil` replaces `model.images.to_pil` inside the set."""
    model, sampler, conditioner = engine.model, engine.sampler, engine.conditioner

    def wrap(obj: object, name: str, label: str) -> Any:
        fn = getattr(obj, name)

        def wrapped(*a: Any, **k: Any) -> Any:
            with tracker.phase(label):
                return fn(*a, **k)

        return mock.patch.object(obj, name, wrapped)

    patches = [
        wrap(conditioner, "generate", "prefill"), wrap(conditioner, "edit", "prefill"),
        wrap(conditioner, "image_embeddings", "edit encode"),
        wrap(running_set.RunningSet, "_advance", "mar step"), wrap(sampler, "sample_head", "diffusion head"),
        wrap(model.vae, "decode_tokens", "vae decode"),
        mock.patch.object(running_set, "to_pil", to_pil),
        mock.patch.object(F, "scaled_dot_product_attention", fused_attention),
    ]
    for p in patches:
        p.start()
    try:
        yield
    finally:
        for p in reversed(patches):
            p.stop()


def account(engine: UniPicEngine, kind: str, size: int, batch: int, steps: int = 32) -> LiveBytes:
    """Run one set of `batch` requests to completion on meta tensors; returns the tracker."""
    weights = sum(weight_bytes(engine.model).values())
    cfg = engine.config
    tracker = LiveBytes(base=weights, scalar=512 + cfg.mar.buffer_size + cfg.tokens_for(size))

    def device_pixels(pixels: torch.Tensor) -> list[Image.Image]:  # model.images.to_pil up to the copy to host
        with tracker.phase("png"):
            u8 = torch.clamp(127.5 * pixels + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            return [Image.new("RGB", (u8.shape[2], u8.shape[1])) for _ in range(u8.shape[0])]

    with phases_of(engine, tracker, device_pixels), tracker:
        rs = engine.open_set(kind, size)
        rs.admit(requests(kind, size, batch, steps))
        while rs.items:
            rs.step()
        del rs
    return tracker


def table(engine: UniPicEngine, sizes: list[int], batches: list[int], steps: int) -> list[dict[str, Any]]:
    rows = []
    for kind in ("generate", "edit"):
        for size in sizes:
            for batch in batches:
                t = account(engine, kind, size, batch, steps)
                rows.append({"kind": kind, "size": size, "batch": batch, "peak": t.peak, "phases": dict(t.phases)})
    return rows


def show(weights: dict[str, int], rows: list[dict[str, Any]]) -> str:
    lines = ["weights (bf16): " + ", ".join(f"{k} {v / GIB:.3f}" for k, v in weights.items())
             + f"; total {sum(weights.values()) / GIB:.3f} GiB"]
    head = f"{'kind':9s} {'size':>5s} {'b':>2s} {'peak':>7s} " + " ".join(f"{p:>14s}" for p in PHASES)
    lines += ["live GiB at each phase's peak (weights included):", head]
    for r in rows:
        cells = " ".join(f"{r['phases'][p] / GIB:14.3f}" if p in r["phases"] else f"{'-':>14s}" for p in PHASES)
        lines.append(f"{r['kind']:9s} {r['size']:5d} {r['batch']:2d} {r['peak'] / GIB:7.3f} {cells}")
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], path: Path = TABLE,
                before: dict[tuple[str, int], int] | None = None) -> None:
    """Put cpu-accounted peaks into card fit's table wherever no GPU measurement of this code exists.

    A meta run sees no allocator fragmentation, workspaces or kernel choice, so each accounted row is raised by
    the gap between the GPU measurement and the account at batch 1 for its kind and size (never lowered): the
    rows then stay consistent with the measured ones, and the account only says how a row grows with the batch.
    `before`: the account at batch 1, per (kind, size), of the code the GPU measured (issue 26's cuts off); the
    gap is then taken against it, and the measured cells of those sizes are replaced too (the code they measured
    is gone), the measurement kept beside as `measured_gib`. Rows with "passes" 2 (CFG rows in two passes)
    are added beside the one-pass rows, with the same gap."""
    data = json.loads(path.read_text())
    for row in data["rows"]:
        row.setdefault("basis", "estimated" if row["estimated"] else "measured")
    accounted = {(r["kind"], r["size"], r["batch"], r.get("passes", 1)): r["peak"] / GIB for r in rows}
    measured = {(r["kind"], r["size"], r["batch"]): r.get("measured_gib", r["peak_gib"]) for r in data["rows"]
                if r["basis"] == "measured" or "measured_gib" in r}
    before = before or {}

    def gap(kind: str, size: int) -> float:
        if (kind, size, 1) not in measured:
            return 0.0
        base = before[kind, size] / GIB if (kind, size) in before else accounted.get((kind, size, 1, 1))
        return 0.0 if base is None else max(0.0, measured[kind, size, 1] - base)

    by_key = {(r["kind"], r["size"], r["batch"], r.get("passes", 1)): r for r in data["rows"]}
    for key, peak in accounted.items():
        kind, size, batch, passes = key
        row = by_key.get(key)
        if row is None:
            if passes == 1:
                continue  # cells of the table only
            row = by_key[key] = {"kind": kind, "size": size, "batch": batch}
            data["rows"].append(row)
        row.setdefault("basis", "cpu-accounted")
        if row["basis"] == "measured" and (kind, size) not in before:
            continue
        if row["basis"] == "measured":
            row["measured_gib"], row["measured_note"] = row["peak_gib"], "GPU, before issue 26's cuts"
        row["peak_gib"], row["basis"], row["estimated"] = round(peak + gap(kind, size), 2), "cpu-accounted", True
        if passes != 1:
            row["passes"] = passes
    data["cpu_accounted"] = ("python -m bench.memory --write-table: meta-device run of the engine at the full "
                             "config, bf16, 32 MAR steps, CFG 3, live storages in 512-byte blocks, raised by the "
                             "batch-1 gap between the GPU measurement and the account of the code it measured")
    head = {k: v for k, v in data.items() if k != "rows"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    body = ",\n".join(f"  {json.dumps(r)}" for r in data["rows"])
    path.write_text("{\n" + "\n".join(lines) + '\n "rows": [\n' + body + "\n ]\n}\n")


CUTS = ("vae bands", "no step K/V copy", "llm mlp slices", "cfg two passes", "int8 llm")


@contextmanager
def cuts_applied(engine: UniPicEngine, cuts: set[str], size: int) -> Iterator[None]:
    """The engine with only these cuts in effect ("int8 llm" is the engine's own: build it with `int8=True`)."""
    bands, rows, passes = vae.BAND_PIXELS, engine.runner.mlp_rows, engine.row_passes
    build = running_set.RunningSet._rows_layout

    def copied_layout(self: running_set.RunningSet, chosen: list[running_set.ItemState]) -> running_set.Layout:
        """Before the cut each layout held every prefix copied into one (R, kv_heads, T+P+L, hd) buffer per
        layer (K and V), beside the items' own prefixes: hold that buffer with the layout."""
        layout = build(self, chosen)
        if not hasattr(layout, "copied"):
            rows, width = layout.text_mask.shape
            k0 = chosen[0].cond.kv.keys[0]
            shape = (rows, k0.shape[1], width + self.model.cfg.mar.buffer_size + self.seq_len, k0.shape[3])
            layout.copied = [k0.new_zeros(shape) for _ in range(2 * len(chosen[0].cond.kv.keys))]  # type: ignore[attr-defined]
        return layout

    patch = None if "no step K/V copy" in cuts else mock.patch.object(running_set.RunningSet, "_rows_layout",
                                                                        copied_layout)
    if "vae bands" not in cuts:
        vae.BAND_PIXELS = 2**62
    engine.runner.mlp_rows = rows if "llm mlp slices" in cuts else None
    engine.row_passes = {size: 2} if "cfg two passes" in cuts else {}
    if patch is not None:
        patch.start()
    try:
        yield
    finally:
        if patch is not None:
            patch.stop()
        vae.BAND_PIXELS, engine.runner.mlp_rows, engine.row_passes = bands, rows, passes


def cuts_table(cfg: UniPicConfig, head_steps: int, steps: int, size: int = 1024, batches: tuple[int, ...] = (1, 2)
               ) -> list[dict[str, Any]]:
    """Peaks with the cuts added one at a time (cumulative), generate and edit at each batch."""
    plain, int8 = meta_engine(cfg, head_steps=head_steps), meta_engine(cfg, head_steps=head_steps, int8=True)
    out = []
    for n in range(len(CUTS) + 1):
        cuts = set(CUTS[:n])
        engine = int8 if "int8 llm" in cuts else plain
        peaks = {}
        for kind in ("generate", "edit"):
            for batch in batches:
                with cuts_applied(engine, cuts, size):
                    peaks[f"{kind} b{batch}"] = account(engine, kind, size, batch, steps).peak
        out.append({"cut": CUTS[n - 1] if n else "none (before issue 26)", "peaks": peaks})
    return out


def show_cuts(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0]["peaks"])
    lines = ["peak GiB at 1024 px with the cuts added one by one (saving against the row above):",
             f"{'cut added':24s} " + " ".join(f"{c:>17s}" for c in cols)]
    for prev, row in zip([None, *rows], rows, strict=False):
        cells = []
        for c in cols:
            now = row["peaks"][c] / GIB
            cells.append(f"{now:7.3f}" + (f" ({now - prev['peaks'][c] / GIB:+.3f})" if prev else " " * 9))
        lines.append(f"{row['cut']:24s} " + " ".join(f"{c:>17s}" for c in cells))
    return "\n".join(lines)


def drift() -> str:
    """int8 LLM vs fp32 and bf16 on the tiny model's parity inputs (bench/gpu_suite.py's drift requests), CPU:
    max |a - b| / 255 over each image's 8-bit pixels, and the final latent tokens' max |a - b| / max |a|."""
    reqs = [GenerateRequest(str(i), f"prompt {i}", seed=i, size=64, steps=4) for i in range(3)]
    runs = {}
    for name, dtype, int8 in (("fp32", "float32", False), ("bf16", "bfloat16", False),
                              ("int8 fp32", "float32", True), ("int8 bf16", "bfloat16", True)):
        engine = load_engine("tiny", "cpu", dtype, int8=int8)
        rs = engine.open_set("generate", 64)
        rs.admit(reqs)
        done = {}
        while rs.items:
            done.update({f.id: f for f in rs.step()})
        runs[name] = [done[r.id] for r in reqs]

    def compare(a: str, b: str) -> str:
        px = [float(np.abs(np.asarray(x.images[0], np.float32) - np.asarray(y.images[0], np.float32)).max()) / 255
              for x, y in zip(runs[a], runs[b], strict=True) if x.images and y.images]  # step() decodes
        tok = [float((x.tokens.float() - y.tokens.float()).abs().max() / x.tokens.float().abs().max())
               for x, y in zip(runs[a], runs[b], strict=True)]
        return (f"{b + ' vs ' + a:22s} " + " ".join(f"{v:6.3f}" for v in px) + "   "
                + " ".join(f"{v:8.2e}" for v in tok))

    lines = ["drift on the tiny model's parity inputs (3 generate requests, 64 px, 4 steps, CPU):",
             f"{'pair':22s} {'max |dpx| / 255 per image':>22s}   {'tokens max |d| / max |a|':>26s}"]
    lines += [compare("fp32", "bf16"), compare("fp32", "int8 fp32"), compare("fp32", "int8 bf16"),
              compare("bf16", "int8 bf16")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="unipic-1.5b")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--batches", default="1,2,3,4")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--head-steps", type=int, default=4,
                    help="diffusion head passes per MAR step (the model uses 100; each allocates alike)")
    ap.add_argument("--no-cuts", action="store_true", help="the VAE without bands (the memory before the cuts)")
    ap.add_argument("--int8", action="store_true", help="the LLM's decoder linears as weight-only int8")
    ap.add_argument("--cuts", action="store_true", help="issue 26's cuts one by one at 1024 px (at --batches)")
    ap.add_argument("--drift", action="store_true", help="the int8 mode's drift on the tiny model (CPU)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--write-table", action="store_true", help="put the totals into workers/device/card_fit_table.json")
    args = ap.parse_args()
    if args.drift:
        print(drift())
        return
    if args.cuts:
        batches = tuple(int(b) for b in args.batches.split(","))
        print(show_cuts(cuts_table(get_config(args.config), args.head_steps, args.steps, batches=batches)))
        return
    if args.no_cuts:
        vae.BAND_PIXELS = 2**62
    engine = meta_engine(get_config(args.config), head_steps=args.head_steps, int8=args.int8)
    weights = weight_bytes(engine.model)
    rows = table(engine, [int(s) for s in args.sizes.split(",")], [int(b) for b in args.batches.split(",")],
                 args.steps)
    print(show(weights, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": weights, "rows": rows}, indent=1))
    if args.write_table:
        write_table(rows)


if __name__ == "__main__":
    main()
