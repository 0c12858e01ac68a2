"""The model engine: `load_engine(source, device, dtype)` and batched generate / edit / understand.

Owns the request -> rows -> sampler -> result flow of docs/architecture.md "Model engine": compatibility checks,
prompt rows with de-duplicated prefix passes, per-item generators (CPU, seeded by the item's seed), progress and
cancellation between steps, VAE encode/decode and PIL conversion. Knows nothing of jobs, queues or storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from model.checkpoint import LoadedModel, load_model
from model.config import UniPicConfig
from model.decoding import DecodeRow, decode
from model.diffusion import DiffusionSchedule
from model.fast_paths import eager, set_fast_paths
from model.images import edit_pixels, to_pil, understand_pixels
from model.llm import QwenRunner
from model.prompts import (
    DEFAULT_QUESTION,
    EDIT_UNCOND,
    Tokenizer,
    image_input,
    load_tokenizer,
    pad_rows,
    t2i_input,
    t2i_uncond_input,
)
from model.sampler import MARSampler, SampleItem

log = logging.getLogger(__name__)

ProgressFn = Callable[[list[str], int, int], None]
CancelFn = Callable[[], set[str]]


@dataclass
class GenerateRequest:
    id: str
    prompt: str
    seed: int
    size: int = 1024
    num_images: int = 1
    steps: int = 32
    guidance_scale: float = 3.0
    guidance_schedule: str = "constant"
    temperature: float = 1.0
    negative_prompt: str | None = None


@dataclass
class EditRequest:
    id: str
    image: Image.Image
    instruction: str
    seed: int
    size: int = 1024
    num_images: int = 1
    steps: int = 32
    guidance_scale: float = 3.0
    guidance_schedule: str = "constant"
    temperature: float = 1.0


@dataclass
class UnderstandRequest:
    id: str
    image: Image.Image
    question: str
    seed: int
    size: int = 1024
    max_new_tokens: int = 256
    temperature: float = 0.0


@dataclass
class ImageResult:
    id: str
    images: list[Image.Image]
    seed: int
    seconds: float
    canceled: bool = False


@dataclass
class TextResult:
    id: str
    text: str
    seed: int
    seconds: float
    canceled: bool = False


def item_generator(seed: int) -> torch.Generator:
    """The item's own CPU generator: draws are then moved to the device, never taken from device RNG state."""
    return torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))


SCHEDULES = ("constant", "linear")


def _check_sampling(requests: list) -> None:
    """Reject bad sampling parameters before any work starts (ValueError names the request)."""
    for r in requests:
        if r.guidance_schedule not in SCHEDULES:
            raise ValueError(f"request {r.id}: guidance_schedule must be one of {SCHEDULES}")
        if r.steps < 1 or r.num_images < 1:
            raise ValueError(f"request {r.id}: steps and num_images must be >= 1")
        if r.temperature < 0 or r.guidance_scale < 0:
            raise ValueError(f"request {r.id}: temperature and guidance_scale must be >= 0")


def _sample_items(requests: list[GenerateRequest] | list[EditRequest]) -> list[SampleItem]:
    """One sampling item per request, each drawing from its own generator seeded by its own seed."""
    return [SampleItem(r.id, r.num_images, r.temperature, item_generator(r.seed)) for r in requests]


def _same_key(requests: list, fields: tuple[str, ...]) -> None:
    if not requests:
        return
    keys = {tuple(getattr(r, f) for f in fields) for r in requests}
    if len(keys) > 1:
        raise ValueError(f"requests in one call must share {fields}; got {sorted(keys)}")


@dataclass
class UniPicEngine:
    loaded: LoadedModel
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    cuda_graphs: bool = True
    fast: bool = False  # torch.compile the hot modules (model.fast_paths); eager stays the reference
    runner: QwenRunner = field(init=False)
    sampler: MARSampler = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.runner = QwenRunner(self.model.llm, cfg.llm)
        schedule = DiffusionSchedule.create(cfg.diffloss.num_train_steps, cfg.diffloss.respacing,
                                            cfg.diffloss.max_beta)
        self.sampler = MARSampler(self.model, self.runner, schedule, self.cuda_graphs)
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

    # ---- validation -------------------------------------------------------------------------------------
    def _grid(self, size: int) -> tuple[int, int]:
        stride = self.config.vae.stride
        if size <= 0 or size % stride:
            raise ValueError(f"size must be a positive multiple of {stride}, got {size}")
        return size // stride, size // stride

    # ---- shared pieces ----------------------------------------------------------------------------------
    def _image_embeddings(self, pixels: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (N, 3, S, S) -> (x_con (N, P+L, D), z_img (N, L+P, H) with buffers rotated to the end)."""
        p = self.config.mar.buffer_size
        tokens = self.model.vae.encode_tokens(pixels)  # (N, m, n, C)
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # (N, L, C)
        x_con = self.model.mar.encode(tokens, None, grid)
        z = self.model.proj_in(x_con)
        return x_con, torch.cat([z[:, p:], z[:, :p]], dim=1)

    def _embed_rows(self, rows: list[list[int]], images: list[torch.Tensor | None]):
        """Embed right-padded rows; each row's `<image>` slots take its image rows in order."""
        ids, text_mask = pad_rows(rows, self.tokenizer.pad_id, self.device)
        embeds = self.runner.embed(ids)  # (U, T, H)
        for r, z in enumerate(images):
            if z is not None:
                slots = ids[r] == self.tokenizer.image_id
                embeds[r, slots] = z.to(embeds.dtype)
        return embeds, text_mask

    def _sample(self, items: list[SampleItem], unique: list[list[int]], unique_images: list, row_source: list[int],
                grid, steps, scale, schedule, con_rows, progress, should_cancel):
        embeds, mask = self._embed_rows(unique, unique_images)
        seq_len = grid[0] * grid[1]
        p = self.config.mar.buffer_size
        with eager():  # text lengths vary per request: the prefix pass is never compiled (model.fast_paths)
            _, kv = self.runner.prefix(embeds)
        src = torch.tensor(row_source, device=self.device)
        kv = kv.select(src, capacity=kv.prefix_len + seq_len + p)
        state = self.sampler.init_state(items, kv, mask.index_select(0, src), seq_len, scale != 1.0, con_rows)
        return self.sampler.run(state, grid, steps, scale, schedule, progress, should_cancel)

    def _finish(self, state, requests, t0: float) -> list[ImageResult]:
        b = state.cond_rows
        grid = int(state.tokens.shape[1] ** 0.5)
        images: list[Image.Image] = []
        if b:
            cond = state.tokens[:b].reshape(b, grid, grid, -1)  # (B, m, n, C): uncond rows are never decoded
            images = to_pil(self.model.vae.decode_tokens(cond))
        out, at = {}, 0
        for it in state.items:
            out[it.id] = images[at : at + it.rows]
            at += it.rows
        elapsed = time.perf_counter() - t0
        return [ImageResult(r.id, out.get(r.id, []), r.seed, elapsed, r.id not in out) for r in requests]

    # ---- tasks ------------------------------------------------------------------------------------------
    def _image_call(self, requests: list[GenerateRequest] | list[EditRequest]) -> tuple[tuple[int, int], bool]:
        """Checks shared by generate and edit; the latent grid and whether CFG doubles the rows."""
        _same_key(requests, ("size", "steps", "guidance_scale", "guidance_schedule"))
        _check_sampling(requests)
        return self._grid(requests[0].size), requests[0].guidance_scale != 1.0

    def generate(self, requests: list[GenerateRequest], progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> list[ImageResult]:
        if not requests:
            return []
        t0 = time.perf_counter()
        grid, cfg = self._image_call(requests)
        first = requests[0]
        with torch.inference_mode():
            items = _sample_items(requests)
            texts = [t2i_input(r.prompt) for r in requests]
            uncond = [t2i_uncond_input(r.negative_prompt) for r in requests] if cfg else []
            unique = list(dict.fromkeys(texts + uncond))
            ids = [self.tokenizer.encode(t) for t in unique]
            cond_src = [unique.index(t) for r, t in zip(requests, texts, strict=True) for _ in range(r.num_images)]
            uncond_src = [unique.index(t) for r, t in zip(requests, uncond, strict=False) for _ in range(r.num_images)]
            state = self._sample(items, ids, [None] * len(ids), cond_src + uncond_src, grid, first.steps,
                                 first.guidance_scale, first.guidance_schedule, None, progress, should_cancel)
            return self._finish(state, requests, t0)

    def edit(self, requests: list[EditRequest], progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> list[ImageResult]:
        if not requests:
            return []
        t0 = time.perf_counter()
        grid, cfg = self._image_call(requests)
        first = requests[0]
        slots = grid[0] * grid[1] + self.config.mar.buffer_size
        with torch.inference_mode():
            items = _sample_items(requests)
            pixels = edit_pixels([r.image for r in requests], first.size, self.dtype, self.device)
            x_con, z_img = self._image_embeddings(pixels, grid)
            con = self.model.mar.decoder_embed(x_con)  # (N, P+L, D), once per generation
            unique, unique_images, cond_src, uncond_src, con_idx = [], [], [], [], []
            for i, r in enumerate(requests):
                unique.append(self.tokenizer.encode(image_input(r.instruction), slots))
                unique_images.append(z_img[i])
                cond_src += [len(unique) - 1] * r.num_images
                con_idx += [i] * r.num_images
                if cfg:
                    unique.append(self.tokenizer.encode(image_input(EDIT_UNCOND), slots))
                    unique_images.append(z_img[i])
                    uncond_src += [len(unique) - 1] * r.num_images
            rows_con = con.index_select(0, torch.tensor(con_idx + (con_idx if cfg else []), device=self.device))
            state = self._sample(items, unique, unique_images, cond_src + uncond_src, grid, first.steps,
                                 first.guidance_scale, first.guidance_schedule, rows_con, progress, should_cancel)
            return self._finish(state, requests, t0)

    def understand(self, requests: list[UnderstandRequest], progress: ProgressFn | None = None,
                   should_cancel: CancelFn | None = None) -> list[TextResult]:
        _same_key(requests, ("size",))
        if not requests:
            return []
        t0 = time.perf_counter()
        first = requests[0]
        grid = self._grid(first.size)
        slots = grid[0] * grid[1] + self.config.mar.buffer_size
        for r in requests:
            if r.max_new_tokens < 1 or r.temperature < 0:
                raise ValueError(f"request {r.id}: max_new_tokens must be >= 1 and temperature >= 0")
        with torch.inference_mode():
            pixels = understand_pixels([r.image for r in requests], first.size, self.dtype, self.device)
            _, z_img = self._image_embeddings(pixels, grid)
            rows = [self.tokenizer.encode(image_input(r.question or DEFAULT_QUESTION), slots) for r in requests]
            embeds, mask = self._embed_rows(rows, list(z_img))
            decode_rows = [DecodeRow(r.id, r.max_new_tokens, r.temperature, item_generator(r.seed)) for r in requests]
            with eager():  # token decoding: shapes vary with the prompt, never compiled
                out = decode(self.runner, embeds, mask, decode_rows, self.tokenizer.stop_ids,
                             self.loaded.repetition_penalty, should_cancel or (lambda: set()), progress)
        elapsed = time.perf_counter() - t0
        return [TextResult(r.id, "" if ids is None else self.tokenizer.decode(ids), r.seed, elapsed, ids is None)
                for r, ids in zip(requests, out, strict=False)]


def load_engine(source: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                fast: bool = False) -> UniPicEngine:
    """Load weights and tokenizer once; the engine then serves any number of calls.

    source: "tiny" (random tiny weights, fixed seed, identical in every process), a local checkpoint directory
    (official layout, see `model.checkpoint`), a Hugging Face repo id such as "Skywork/Skywork-UniPic-1.5B", or
    "random:<config>" (random weights drawn on the device; benchmarks only). dtype: float32 / bfloat16 / float16.
    fast: compiled hot modules (`model.fast_paths`), off by default; the eager path is always selectable.
    """
    loaded = load_model(source, device, dtype)
    tokenizer = load_tokenizer(loaded.directory, loaded.config.llm.vocab_size)
    params = next(loaded.model.parameters())
    log.info("loaded %s (%s) on %s as %s", loaded.model_id, loaded.revision, params.device, params.dtype)
    return UniPicEngine(loaded, tokenizer, params.device, params.dtype, fast=fast)
