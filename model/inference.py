"""The model engine: `load_engine(source, device, dtype)`, running sets, and batched generate / edit / understand.

Owns the request -> result calls of docs/architecture.md "Model engine": `open_set(kind, size)` hands out a
stepping engine (`model.engine.running_set`) for continuous batching, and `generate` / `edit` are thin wrappers that
run one set to completion with progress and cancellation between steps; so is `understand`, over a decode set
(`model.engine.decode_set`: token-level, one token per step). Knows nothing of jobs, queues or storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, overload

import torch

from model.checkpoint import LoadedModel, load_model
from model.config import UniPicConfig
from model.diffusion import DiffusionSchedule
from model.engine.conditioning import Conditioner
from model.engine.decode_set import DecodeSet
from model.engine.fast_paths import set_fast_paths
from model.engine.requests import (
    SCHEDULES,
    EditRequest,
    GenerateRequest,
    ImageRequest,
    ImageResult,
    TextResult,
    UnderstandRequest,
    check_sampling,
    item_generator,
)
from model.engine.running_set import RunningSet
from model.engine.sampler import MARSampler
from model.llm import QwenRunner, quantize_int8
from model.prompts import Tokenizer, load_tokenizer

__all__ = [
    "SCHEDULES", "CancelFn", "EditRequest", "GenerateRequest", "ImageResult", "ProgressFn", "RunningSet",
    "TextResult", "UnderstandRequest", "UniPicEngine", "item_generator", "load_engine",
]

log = logging.getLogger(__name__)

ProgressFn = Callable[[list[str], int, int], None]
CancelFn = Callable[[], set[str]]


def _same_key(requests: list, fields: tuple[str, ...]) -> None:
    if not requests:
        return
    keys = {tuple(getattr(r, f) for f in fields) for r in requests}
    if len(keys) > 1:
        raise ValueError(f"requests in one call must share {fields}; got {sorted(keys)}")


def run_to_completion(rs: RunningSet, requests: list[ImageRequest], progress: ProgressFn | None,
                      should_cancel: CancelFn | None) -> list[ImageResult]:
    """Step a set whose items share `steps` until none is live; canceled items come back empty."""
    t0 = time.perf_counter()
    rs.admit(requests)
    images = {}
    step, total = 0, requests[0].steps
    while rs.items:
        live = rs.ids
        images.update({f.id: f.images for f in rs.step()})
        step += 1
        if progress is not None:
            progress(live, step, total)
        if should_cancel is not None and rs.items:
            rs.drop(set(should_cancel()))
    elapsed = time.perf_counter() - t0
    return [ImageResult(r.id, images.get(r.id, []), r.seed, elapsed, r.id not in images) for r in requests]


@dataclass
class UniPicEngine:
    loaded: LoadedModel
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    cuda_graphs: bool = True
    fast: bool = False  # torch.compile the hot modules (model.engine.fast_paths); eager stays the reference
    # image size -> passes a MAR step's rows run in (2: CFG's cond and uncond rows apart) where one batch does not
    # fit the device; the worker's card fit sets it, results do not depend on it
    row_passes: dict[int, int] = field(default_factory=dict)
    runner: QwenRunner = field(init=False)
    sampler: MARSampler = field(init=False)
    conditioner: Conditioner = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.runner = QwenRunner(self.model.llm, cfg.llm)
        schedule = DiffusionSchedule.create(cfg.diffloss.num_train_steps, cfg.diffloss.respacing,
                                            cfg.diffloss.max_beta)
        self.sampler = MARSampler(self.model, self.runner, schedule, self.cuda_graphs)
        self.conditioner = Conditioner(self.model, self.runner, self.tokenizer)
        set_fast_paths(self.model, self.fast)

    @property
    def model(self):  # -> UniPic
        return self.loaded.model

    @property
    def config(self) -> UniPicConfig:
        return self.loaded.config

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def revision(self) -> str:
        return self.loaded.revision

    @overload
    def open_set(self, kind: Literal["generate", "edit"], size: int) -> RunningSet: ...
    @overload
    def open_set(self, kind: Literal["understand"], size: int) -> DecodeSet: ...
    @overload
    def open_set(self, kind: str, size: int) -> RunningSet | DecodeSet: ...
    def open_set(self, kind: str, size: int) -> RunningSet | DecodeSet:
        """An empty running set for one compatibility class: kind "generate" or "edit" (sampling steps), or
        "understand" (decode steps), and the image size."""
        if kind == "understand":
            return DecodeSet(self.conditioner, size, self.loaded.repetition_penalty)
        return RunningSet(self.sampler, self.conditioner, kind, size, row_passes=self.row_passes.get(size, 1))

    # ---- tasks ------------------------------------------------------------------------------------------
    def _image_call(self, kind: str, requests: list[GenerateRequest] | list[EditRequest], progress: ProgressFn | None,
                    should_cancel: CancelFn | None) -> list[ImageResult]:
        """One call's requests share size and sampling (a running set allows mixing; a call never did)."""
        if not requests:
            return []
        _same_key(requests, ("size", "steps", "guidance_scale", "guidance_schedule"))
        check_sampling(requests)
        rs = self.open_set(kind, requests[0].size)
        return run_to_completion(rs, list(requests), progress, should_cancel)

    def generate(self, requests: list[GenerateRequest], progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> list[ImageResult]:
        return self._image_call("generate", requests, progress, should_cancel)

    def edit(self, requests: list[EditRequest], progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> list[ImageResult]:
        return self._image_call("edit", requests, progress, should_cancel)

    def understand(self, requests: list[UnderstandRequest], progress: ProgressFn | None = None,
                   should_cancel: CancelFn | None = None) -> list[TextResult]:
        """Run one decode set to completion: every item one token per step, canceled ones dropped between steps."""
        _same_key(requests, ("size",))
        if not requests:
            return []
        t0 = time.perf_counter()
        ds = self.open_set("understand", requests[0].size)
        ds.admit(requests)
        texts: dict[str, str | None] = {}
        limit = max(r.max_new_tokens for r in requests)
        step = 0
        while ds.items:
            texts.update((f.id, f.text) for f in ds.step())
            step += 1
            texts.update((gone, None) for gone in ds.drop(should_cancel() if should_cancel else set()))
            if progress is not None:
                progress(ds.ids, step, limit)
        elapsed = time.perf_counter() - t0
        return [TextResult(r.id, texts[r.id] or "", r.seed, elapsed, texts[r.id] is None) for r in requests]


def load_engine(source: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                fast: bool = False, int8: bool = False) -> UniPicEngine:
    """Load weights and tokenizer once; the engine then serves any number of calls.

    source: "tiny" (random tiny weights, fixed seed, identical in every process), a local checkpoint directory
    (official layout, see `model.checkpoint`), a Hugging Face repo id such as "Skywork/Skywork-UniPic-1.5B", or
    "random:<config>" (random weights drawn on the device; benchmarks only). dtype: float32 / bfloat16 / float16.
    fast: compiled hot modules (`model.engine.fast_paths`), off by default; the eager path is always selectable.
    int8: the LLM's decoder linears as weight-only int8 (`model.llm.quantize_int8`), off by default: 1.2 GiB less
    at bf16 for a small drift (`python -m bench.memory --drift`).
    """
    loaded = load_model(source, device, dtype)
    if int8:
        quantize_int8(loaded.model.llm)
    tokenizer = load_tokenizer(loaded.directory, loaded.config.llm.vocab_size)
    params = next(loaded.model.parameters())
    log.info("loaded %s (%s) on %s as %s", loaded.model_id, loaded.revision, params.device, params.dtype)
    return UniPicEngine(loaded, tokenizer, params.device, params.dtype, fast=fast)
