"""Token-level continuous batching for understanding (issue 25, item 2; spec §7.1): a running set of understand
requests of one image size that admits, drops and retires items between two decode steps, each at its own token.

Why a slab: every item's K/V live in one row of the set's slab (rows x capacity slots per layer), laid out from slot
0: its prompt, prefilled alone and unpadded (no batch-mate's length enters it), then the tokens it generated. A
step writes each advancing row's new K/V at its own slot and attends with a per-row length mask
(`QwenRunner.extend_rows`), so items that joined at different tokens share one batched pass instead of waiting for
the set to end. The slab grows (by one row, or to the slots a newcomer needs) and never shrinks while items
live; a retired item's row is reused, and an empty set frees it. Greedy picks and each item's own generator for
sampling make an item's text independent of when it joined and who shared its steps (up to the rounding of a
masked attention: the tests compare token ids with the item alone).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from model.engine.conditioning import Conditioner
from model.engine.decoding import DecodeRow, apply_repetition_penalty, choose
from model.engine.fast_paths import eager
from model.engine.requests import UnderstandRequest, item_generator
from model.images import understand_pixels
from model.llm import KVBuffer, QwenRunner
from model.prompts import DEFAULT_QUESTION, Tokenizer, image_input


@dataclass
class TextFinished:
    """An item that chose its last token: the generated ids (stop token excluded) and their text."""

    id: str
    token_ids: list[int]
    text: str


@dataclass
class DecodeItem:
    """One live request. Its K/V are row `row` of the slab: prompt at [0, length), generated tokens after it."""

    request: DecodeRow
    row: int
    length: int  # prompt tokens
    logits: torch.Tensor  # (V,) float: the next token's
    seen: torch.Tensor  # (V,) bool: tokens it generated (the repetition penalty's)
    out: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.request.id


@dataclass
class DecodeStats:
    """Rows advanced through the LLM, and the K/V slots their attention read: those of their own rows, and the
    masked ones of rows shorter than the widest of their step (the ragged layout's padding)."""

    steps: int = 0
    rows: int = 0
    slots: int = 0
    pad_slots: int = 0


@dataclass
class DecodeSet:
    """The understand counterpart of `model.engine.running_set.RunningSet`, with the same surface for the worker's
    running loop: `admit`, `step(ids)` (one token for each chosen item), `drop`, `progress`, `ids`, `rows`."""

    conditioner: Conditioner
    size: int
    repetition_penalty: float
    kind: str = "understand"
    items: list[DecodeItem] = field(default_factory=list)
    stats: DecodeStats = field(default_factory=DecodeStats)
    _slab: KVBuffer | None = None
    _free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        stride = self.conditioner.model.cfg.vae.stride
        if self.size <= 0 or self.size % stride:
            raise ValueError(f"size must be a positive multiple of {stride}, got {self.size}")

    @property
    def runner(self) -> QwenRunner:
        return self.conditioner.runner

    @property
    def tokenizer(self) -> Tokenizer:
        return self.conditioner.tokenizer

    @property
    def grid(self) -> tuple[int, int]:
        g = self.size // self.conditioner.model.cfg.vae.stride
        return g, g

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    @property
    def rows(self) -> int:
        return len(self.items)

    def progress(self) -> dict[str, tuple[int, int]]:
        """Tokens chosen and the most it may choose, per live item."""
        return {it.id: (len(it.out), it.request.max_new_tokens) for it in self.items}

    # ---- membership -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, requests: Sequence[UnderstandRequest]) -> None:
        """Add understand requests of this set's size; each chooses its first token at the next `step()`.
        Raises ValueError (naming the request) before admitting any of them if one does not fit."""
        seen = set(self.ids)
        for r in requests:
            if not isinstance(r, UnderstandRequest) or r.size != self.size:
                raise ValueError(f"request {r.id}: not an understand request of size {self.size}")
            if r.id in seen:
                raise ValueError(f"request {r.id}: already in the running set")
            if r.max_new_tokens < 1 or r.temperature < 0:
                raise ValueError(f"request {r.id}: max_new_tokens must be >= 1 and temperature >= 0")
            seen.add(r.id)
        with eager():  # prompt lengths vary per request: never compiled (model.engine.fast_paths)
            prefills = [self._prefill(r) for r in requests]  # each may raise (out of memory): nothing changed yet
        placed: list[DecodeItem] = []
        try:
            for r, (length, kv, logits) in zip(requests, prefills, strict=True):
                request = DecodeRow(r.id, r.max_new_tokens, r.temperature, item_generator(r.seed))
                row = self._take_row(length + r.max_new_tokens, kv)
                placed.append(DecodeItem(request, row, length, logits, torch.zeros_like(logits, dtype=torch.bool)))
        except BaseException:  # a slab that could not grow: the rows already taken are free again
            self._retire(placed)
            raise
        self.items += placed

    def _prefill(self, r: UnderstandRequest) -> tuple[int, KVBuffer, torch.Tensor]:
        """The item's image and prompt alone (no batch-mate's image or length enters its K/V) -> its prompt length,
        K/V and first logits."""
        weight = self.conditioner.model.proj_in[0].weight
        slots = self.grid[0] * self.grid[1] + self.conditioner.model.cfg.mar.buffer_size
        pixels = understand_pixels([r.image], self.size, weight.dtype, weight.device)
        _, z_img = self.conditioner.image_embeddings(pixels, self.grid)
        ids = self.tokenizer.encode(image_input(r.question or DEFAULT_QUESTION), slots)
        embeds, _ = self.conditioner.embed_rows([ids], [z_img[0]])  # (1, T, H), one row: no padding
        length = embeds.shape[1]
        hidden, kv = self.runner.prefix(embeds)
        return length, kv, self.runner.logits(hidden[0, length - 1]).float()

    def _take_row(self, capacity: int, prefix: KVBuffer) -> int:
        """A slab row holding `prefix` (one row) at slots [0, its length), with room for `capacity` slots."""
        slab = self._slab
        if slab is None:
            slab = self._slab = self.runner.new_buffer(1, capacity, prefix.keys[0], zeroed=True)
            self._free = [0]
        rows, slots = slab.keys[0].shape[0], slab.keys[0].shape[2]
        if not self._free or capacity > slots:
            grown = self.runner.new_buffer(rows + (0 if self._free else 1), max(slots, capacity), prefix.keys[0],
                                           zeroed=True)  # exactly what is needed: the card's budget counts rows
            for old, new in zip(slab.keys + slab.values, grown.keys + grown.values, strict=True):
                new[:rows, :, :slots] = old
            self._free += list(range(rows, grown.keys[0].shape[0]))
            slab = self._slab = grown
        row = self._free.pop(0)
        n = prefix.prefix_len
        for src, dst in zip(prefix.keys + prefix.values, slab.keys + slab.values, strict=True):
            dst[row, :, :n] = src[0, :, :n]
        return row

    def drop(self, ids: Collection[str]) -> list[str]:
        """Remove these items (canceled, failed, re-queued); returns the ids that were live."""
        gone = [it for it in self.items if it.id in ids]
        self._retire(gone)
        return [it.id for it in gone]

    def _retire(self, items: list[DecodeItem]) -> None:
        leaving = {id(it) for it in items}
        self.items = [it for it in self.items if id(it) not in leaving]
        self._free = sorted(self._free + [it.row for it in items])
        if not self.items:
            self._slab, self._free = None, []  # an empty set holds no memory

    # ---- one decode step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, ids: Collection[str] | None = None) -> list[TextFinished]:
        """Choose the next token of every live item (or only of those in `ids`; the others pause), and run the
        chosen tokens of items that go on through the LLM for their next logits. Returns the items that chose a
        stop token or their last allowed one, removed from the set.

        A step that raises (out of memory, a device error) changes no item: generators are rewound and a K/V
        slot written in it is written again by the next try."""
        chosen = sorted((it for it in self.items if ids is None or it.id in ids), key=lambda it: it.row)
        if not chosen:
            return []
        rewind = [it.request.generator.get_state() for it in chosen]
        try:
            logits = apply_repetition_penalty(torch.stack([it.logits for it in chosen]),
                                              torch.stack([it.seen for it in chosen]), self.repetition_penalty)
            picks = choose(logits, [it.request for it in chosen])
            stops = set(self.tokenizer.stop_ids)
            going = [(it, tok) for it, tok in zip(chosen, picks, strict=True)
                     if tok not in stops and len(it.out) + 1 < it.request.max_new_tokens]
            following = self._extend(going) if going else None
        except BaseException:
            for it, state in zip(chosen, rewind, strict=True):
                it.request.generator.set_state(state)
            raise
        for it, tok in zip(chosen, picks, strict=True):
            if tok not in stops:
                it.out.append(tok)
                it.seen[tok] = True
        for n, (it, _) in enumerate(going):
            assert following is not None
            it.logits = following[n]
        moving = {id(it) for it, _ in going}
        done = [it for it in chosen if id(it) not in moving]
        self._retire(done)
        return [TextFinished(it.id, it.out, self.tokenizer.decode(it.out)) for it in done]

    def _extend(self, going: list[tuple[DecodeItem, int]]) -> torch.Tensor:
        """(R, V) next-token logits of the items that go on, each after its chosen token."""
        assert self._slab is not None
        dev = self._slab.keys[0].device
        tokens = torch.tensor([tok for _, tok in going], device=dev)
        slots = [it.length + len(it.out) for it, _ in going]
        with eager():
            hidden = self.runner.extend_rows(self.runner.embed(tokens)[:, None], self._slab,
                                             [it.row for it, _ in going], slots)  # (R, 1, H)
            logits = self.runner.logits(hidden[:, 0]).float()
        ends = [slot + 1 for slot in slots]
        self.stats.steps += 1
        self.stats.rows += len(going)
        self.stats.slots += max(ends) * len(going)
        self.stats.pad_slots += sum(max(ends) - e for e in ends)
        return logits
