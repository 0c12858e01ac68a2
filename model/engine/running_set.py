"""The stepping engine (continuous batching): a running set of image requests advanced one MAR iteration at a time.

A set serves one compatibility class, a kind ("generate" or "edit") and an image size. Between two steps the
caller admits new requests, drops canceled ones and picks which live items advance (the rest pause with their
state kept); every step returns the items that finished, with their decoded images. Each item carries all of
its own state: step index and schedule (`steps`, so the masked count), orders, latent tokens, prefix K/V,
edit conditioning, generator, temperature and guidance, so items with different `steps`, `guidance_scale` or
CFG on/off share a step. Rows are item after item (n cond rows, then n uncond rows with CFG); rows that see
different numbers of visible tokens are packed (no padding), and every attention runs per group of alike rows
over their own lengths (`model.engine.sampler`), so an item's result does not depend on when it joined or who
shared its steps (tests/model/test_running_set.py).
It knows nothing of jobs, queues, leases or progress reporting.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from model.diffusion import masked_after
from model.engine.conditioning import Conditioner, Conditioning
from model.engine.requests import EditRequest, GenerateRequest, ImageRequest, check_sampling, item_generator
from model.engine.sampler import MARSampler, StepRows
from model.images import to_pil
from model.llm import PrefixRun

KINDS = {"generate": GenerateRequest, "edit": EditRequest}


def cfg_scale(scale: float, schedule: str, seq_len: int, masked_next: int) -> float:
    """Guidance at a step (spec §5.4.8): constant, or linear in the share of committed tokens."""
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1 + (scale - 1) * (seq_len - masked_next) / seq_len
    raise ValueError(f"unsupported guidance_schedule {schedule!r} (constant or linear)")


@dataclass
class Finished:
    """An item that took its last step: its images and final latent tokens (cond rows, (n, L, C)). `images` is None
    when the step was asked not to decode (`RunningSet.step(decode=False)`): `RunningSet.decode` makes them."""

    id: str
    images: list[Image.Image] | None
    tokens: torch.Tensor


@dataclass
class ItemState:
    """One live request. Uncond rows (CFG) always equal the cond rows' tokens, so only those are kept."""

    id: str
    rows: int  # images n
    steps: int
    scale: float
    schedule: str
    temperature: float
    generator: torch.Generator
    cond: Conditioning
    orders: torch.Tensor  # (n, L) a random permutation per image
    tokens: torch.Tensor  # (n, L, C)
    after: list[int]  # still masked after each step (spec §5.3)
    step: int = 0

    @property
    def cfg(self) -> bool:
        return self.scale != 1.0

    @property
    def masked(self) -> int:
        return self.after[self.step - 1] if self.step else self.orders.shape[1]

    @property
    def total_rows(self) -> int:
        return self.rows * (2 if self.cfg else 1)


@dataclass
class Layout:
    """Rows of one composition of advancing items; rebuilt only when that composition changes."""

    ids: tuple[str, ...]
    at: list[int]  # first row of each item: its n cond rows, then its n uncond rows with CFG
    prefixes: list[PrefixRun]  # each item's own prefix K/V, read where they are (no step-sized copy)
    text_mask: torch.Tensor  # (R, T), T the longest prefix
    con_embed: torch.Tensor | None  # (R, P+L, D)


@dataclass
class StepStats:
    """Token rows run through the encoder, LLM chunk and decoder; steps whose rows stood at different steps of
    their own (ragged: packed, `model.engine.sampler`), and the rows padding them to the widest would have cost."""

    steps: int = 0
    ragged_steps: int = 0
    token_rows: int = 0
    pad_rows_saved: int = 0


@dataclass
class RunningSet:
    sampler: MARSampler
    conditioner: Conditioner
    kind: str
    size: int
    items: list[ItemState] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)
    # rows of a step run in this many passes (2 with CFG: cond rows, then uncond rows) when memory does not allow
    # one batch (chosen by the worker's card fit); the results are the same
    row_passes: int = 1
    _layout: Layout | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        stride = self.model.cfg.vae.stride
        if self.size <= 0 or self.size % stride:
            raise ValueError(f"size must be a positive multiple of {stride}, got {self.size}")

    @property
    def model(self):  # -> UniPic
        return self.sampler.model

    @property
    def grid(self) -> tuple[int, int]:
        g = self.size // self.model.cfg.vae.stride
        return g, g

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    @property
    def rows(self) -> int:
        """Rows the live items occupy when all advance (cond + uncond)."""
        return sum(it.total_rows for it in self.items)

    def progress(self) -> dict[str, tuple[int, int]]:
        """Steps done and steps in all, per live item."""
        return {it.id: (it.step, it.steps) for it in self.items}

    # ---- membership -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, requests: Sequence[ImageRequest]) -> None:
        """Add requests of this set's kind and size; they take their first step at the next `step()`.
        Raises ValueError (naming the request) before admitting any of them if one does not fit."""
        if not requests:
            return
        seen = set(self.ids)
        for r in requests:
            if not isinstance(r, KINDS[self.kind]) or r.size != self.size:
                raise ValueError(f"request {r.id}: not a {self.kind} request of size {self.size}")
            if r.id in seen:
                raise ValueError(f"request {r.id}: already in the running set")
            seen.add(r.id)
        check_sampling(requests)
        if self.kind == "generate":
            conds = self.conditioner.generate(list(requests))
        else:
            conds = self.conditioner.edit(list(requests), self.grid)
        for r, cond in zip(requests, conds, strict=True):
            self.items.append(self._new_item(r, cond))
        self._layout = None  # an id may come back (re-queued): never reuse rows by id across admissions

    def _new_item(self, r: ImageRequest, cond: Conditioning) -> ItemState:
        gen = item_generator(r.seed)
        length, dev = self.seq_len, cond.text_mask.device
        orders = torch.stack([torch.randperm(length, generator=gen) for _ in range(r.num_images)]).to(dev)  # (n, L)
        channels = self.model.cfg.mar.token_dim
        tokens = cond.kv.keys[0].new_zeros(r.num_images, length, channels)  # (n, L, C)
        return ItemState(r.id, r.num_images, r.steps, r.guidance_scale, r.guidance_schedule, r.temperature, gen,
                         cond, orders, tokens, masked_after(length, r.steps))

    def drop(self, ids: Collection[str]) -> list[str]:
        """Remove these items (canceled, failed, re-queued); returns the ids that were live."""
        gone = [it.id for it in self.items if it.id in ids]
        self.items = [it for it in self.items if it.id not in ids]
        self._layout = None
        return gone

    # ---- one MAR iteration ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, ids: Collection[str] | None = None, decode: bool = True) -> list[Finished]:
        """Advance every live item by one MAR iteration (or only those in `ids`; the others pause).
        Returns the items that took their last step, removed from the set, with their images; with
        `decode=False` without them (`images` None; `decode` makes them, one item per call), so a caller can
        put other work between the decodes of a wave of finished items (the VAE decode of eight small images
        takes far longer than their last MAR iteration) and their rows are free at once.

        A step that raises (out of memory, a device error) changes no item: generators are rewound, so the
        caller may drop items and step again with the same results. If decoding raises, the finished items
        stay in the set and the next `step()` decodes them again."""
        chosen = [it for it in self.items if ids is None or it.id in ids]
        advancing = [it for it in chosen if it.step < it.steps]
        if advancing:
            self._advance(advancing)
        done = [it for it in chosen if it.step == it.steps]
        if not done:
            return []
        if self._layout is not None and {it.id for it in done} & set(self._layout.ids):
            self._layout = None  # its rows change anyway: free its edit rows before the decoder needs the memory
        finished = self._finish(done) if decode else [Finished(it.id, None, it.tokens) for it in done]
        gone = {it.id for it in done}
        self.items = [it for it in self.items if it.id not in gone]
        return finished

    def _advance(self, chosen: list[ItemState]) -> None:
        rewind = [it.generator.get_state() for it in chosen]
        try:
            layout = self._rows_layout(chosen)
            rows = self._step_rows(chosen, layout)
            z = self.sampler.conditions(rows, self.grid, self.row_passes)  # (R, L, D)
            commits = [it.orders[:, it.after[it.step] : it.masked].sort(dim=1).values for it in chosen]  # (n, k_i)
            samples = self._sample(chosen, layout, z, commits)
        except BaseException:
            for it, state in zip(chosen, rewind, strict=True):
                it.generator.set_state(state)
            raise
        for it, commit, s in zip(chosen, commits, samples, strict=True):
            c = it.tokens.shape[-1]
            it.tokens.scatter_(1, commit[..., None].expand(-1, -1, c), s.to(it.tokens.dtype).view(it.rows, -1, c))
            it.step += 1

    def _rows_layout(self, chosen: list[ItemState]) -> Layout:
        ids = tuple(it.id for it in chosen)
        if self._layout is not None and self._layout.ids == ids:
            return self._layout
        at = [sum(it.total_rows for it in chosen[:i]) for i in range(len(chosen))]
        rows = sum(it.total_rows for it in chosen)
        width = max(it.cond.kv.prefix_len for it in chosen)
        mask = chosen[0].cond.text_mask.new_zeros(rows, width)  # (R, T)
        for it, a in zip(chosen, at, strict=True):
            mask[a : a + it.total_rows, : it.cond.kv.prefix_len] = it.cond.text_mask
        prefixes = [PrefixRun(it.cond.kv, 0, it.total_rows) for it in chosen]
        con = None
        if self.kind == "edit":
            con = torch.cat([it.cond.con_embed.expand(it.total_rows, -1, -1) for it in chosen])
        self._layout = Layout(ids, at, prefixes, mask, con)  # con (R, P+L, D)
        return self._layout

    def _step_rows(self, chosen: list[ItemState], layout: Layout) -> StepRows:
        length, p = self.seq_len, self.model.cfg.mar.buffer_size
        visible = [it.orders[:, it.masked :].sort(dim=1).values for it in chosen]  # (n, V_i) ascending raster
        width = max(v.shape[1] for v in visible)
        copies = [2 if it.cfg else 1 for it in chosen]  # uncond rows repeat the cond rows' tokens and orders
        tokens = torch.cat([it.tokens.repeat(c, 1, 1) for it, c in zip(chosen, copies, strict=True)])  # (R, L, C)
        vis = torch.cat([F.pad(v, (0, width - v.shape[1]), value=length).repeat(c, 1)
                         for v, c in zip(visible, copies, strict=True)])  # (R, V), pads = L
        groups: list[tuple[int, int, int, int]] = []  # (first row, end row, prefix T, visible V)
        for it, a, v in zip(chosen, layout.at, visible, strict=True):
            t, n = it.cond.kv.prefix_len, v.shape[1]
            if groups and groups[-1][1] == a and groups[-1][2:] == (t, n):
                groups[-1] = (groups[-1][0], a + it.total_rows, t, n)
            else:
                groups.append((a, a + it.total_rows, t, n))
        rows = StepRows(tokens, vis, groups, layout.prefixes, layout.text_mask, layout.con_embed)
        self.stats.steps += 1
        self.stats.ragged_steps += rows.ragged
        # encoder and LLM chunk: each row's own P+V tokens (packed); decoder: P+L. Host numbers: no sync
        self.stats.token_rows += sum((b - a) * (2 * (p + v) + p + length) for a, b, _, v in groups)
        self.stats.pad_rows_saved += 2 * sum((b - a) * (width - v) for a, b, _, v in groups)
        return rows

    def _sample(self, chosen: list[ItemState], layout: Layout, z: torch.Tensor, commits: list[torch.Tensor]
                ) -> list[torch.Tensor]:
        """Diffusion head over each item's committed tokens, CFG items and plain items in one call each.
        -> per item (n·k_i, C) float32, row-major over its images."""
        out: list[torch.Tensor] = [z] * len(chosen)  # placeholders, all replaced
        for with_cfg in (True, False):
            group = [i for i, it in enumerate(chosen) if it.cfg == with_cfg]
            if group:
                samples = self._sample_group([chosen[i] for i in group], [layout.at[i] for i in group], z,
                                             [commits[i] for i in group])
                for i, s in zip(group, samples, strict=True):
                    out[i] = s
        return out

    def _sample_group(self, items: list[ItemState], at: list[int], z: torch.Tensor, commits: list[torch.Tensor]
                      ) -> list[torch.Tensor]:
        net = self.model.mar.diffloss.net
        c, steps, d = net.input_proj.in_features, self.sampler.schedule.num_steps, z.shape[-1]
        cond_z, uncond_z, scale, temp, init, noise = [], [], [], [], [], []
        for it, a, commit in zip(items, at, commits, strict=True):
            idx = commit[..., None].expand(-1, -1, d)  # (n, k, D)
            cond_z.append(torch.gather(z[a : a + it.rows], 1, idx).reshape(-1, d))  # (n·k, D) row-major
            if it.cfg:
                uncond_z.append(torch.gather(z[a + it.rows : a + 2 * it.rows], 1, idx).reshape(-1, d))
            n = commit.numel()
            s = cfg_scale(it.scale, it.schedule, self.seq_len, max(it.after[it.step], 1)) if it.cfg else 1.0
            scale.append(torch.full((n, 1), s))
            temp.append(torch.full((n, 1), float(it.temperature)))
            init.append(torch.randn(n, c, generator=it.generator))  # the item's draws, in its own order
            noise.append(torch.randn(max(steps - 1, 0), n, c, generator=it.generator))
        dev = z.device
        x = self.sampler.sample_head(torch.cat(cond_z), torch.cat(uncond_z) if uncond_z else None,
                                     torch.cat(scale).to(dev), torch.cat(temp).to(dev), torch.cat(init).to(dev),
                                     torch.cat(noise, dim=1).to(dev))  # (Σ n·k, C)
        return list(x.split([commit.numel() for commit in commits]))

    def _finish(self, done: list[ItemState]) -> list[Finished]:
        """VAE-decode each finished item on its own: a batched decode would let batch-mates move a pixel by a
        level (convolutions round differently with the batch size)."""
        return [self.decode(Finished(it.id, None, it.tokens)) for it in done]

    @torch.inference_mode()
    def decode(self, finished: Finished) -> Finished:
        """The images of an item that left the set undecoded (`step(decode=False)`); needs nothing of the set
        but its model and grid, so it works after the set emptied."""
        m, n = self.grid
        tokens = finished.tokens
        pixels = self.model.vae.decode_tokens(tokens.reshape(tokens.shape[0], m, n, -1))  # (n, 3, S, S)
        return Finished(finished.id, to_pil(pixels), tokens)
