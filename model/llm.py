"""The Qwen2 LLM: built with transformers' classes (official names `llm.*`), run by our own cached forward.

Owns the forward passes UniPic needs (spec §3.2, §5.2-5.4, §7.1): a causal prefix pass that fills a KV buffer,
and chunk passes that attend to a read-only prefix (pads excluded by `text_mask`) with per-row positions. Doing
this here rather than through `DynamicCache` keeps the prefix immutable, lets rows of different lengths share a
batch without changing any row's result, and makes cancellation a row selection. A MAR step's chunk (`chunk`)
attends to prefixes held where they already are (each item's own buffer): its own K/V live for one layer only,
so no step-sized copy of every prefix is made. The SwiGLU MLP runs over at most `mlp_rows` token rows at a time
(row-wise math: the same bits, a bounded intermediate). Math equals HF's Qwen2
(RMSNorm, half-split RoPE in float32, GQA, SwiGLU); `tests/model/test_llm.py` checks it against HF's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from model.config import LLMConfig

ROPE_BLOCK = 256  # positions per block of the cached RoPE table
# token rows per SwiGLU MLP call: its three (rows, intermediate) tensors are the largest a MAR step allocates
# (1024² edit: 2 x 3960 rows x 8960 x 3, 406 MiB in bf16); 2048 rows keep them near 100 MiB and GEMMs large
MLP_ROWS = 2048


def build_llm(cfg: LLMConfig) -> Qwen2ForCausalLM:
    hf_cfg = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(hf_cfg)


@dataclass
class KVBuffer:
    """Per-layer K/V (R, kv_heads, capacity, head_dim); slots [0, prefix_len) are written once by the prefix."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    prefix_len: int

    def select(self, rows: torch.Tensor, capacity: int | None = None) -> KVBuffer:
        """New buffer with these rows (index into this one), optionally grown to `capacity` slots."""
        cap = capacity or self.keys[0].shape[2]

        def take(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty(len(rows), t.shape[1], cap, t.shape[3])
            out[:, :, : self.prefix_len] = t.index_select(0, rows)[:, :, : self.prefix_len]
            return out

        return KVBuffer([take(k) for k in self.keys], [take(v) for v in self.values], self.prefix_len)


@dataclass
class PrefixRun:
    """Consecutive rows of a chunk pass whose prefix K/V are rows [first, first + count) of `kv`."""

    kv: KVBuffer
    first: int
    count: int


@dataclass
class ChunkGroup:
    """Rows [a, b) of a chunk pass that are alike: prefix length t (K/V from `runs`, in row order), chunk length
    n; packed, their (b-a)·n tokens start at token `first` of the pass."""

    a: int
    b: int
    t: int
    n: int
    runs: list[PrefixRun]
    first: int = 0


# attend(layer, q, k, v) with q (*lead, nh, hd), k and v (*lead, nkv, hd), rotated -> (*lead, nh, hd)
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class QwenRunner:
    """Cached forward passes over a `Qwen2ForCausalLM` whose weights it reads but never changes."""

    def __init__(self, llm: Qwen2ForCausalLM, cfg: LLMConfig, mlp_rows: int | None = MLP_ROWS) -> None:
        self.llm = llm
        self.cfg = cfg
        self.mlp_rows = mlp_rows  # None: the MLP over all rows at once
        self._rope_table: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.model.embed_tokens(ids)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (*lead, 1, hd) for positions (*lead), read from a table of every position up to a multiple of
        ROPE_BLOCK: a position's values then never depend on which other positions share the call (vectorized
        cos/sin round differently in a tensor's scalar tail)."""
        dev, top = positions.device, int(positions.max()) + 1 if positions.numel() else 1
        table = self._rope_table.get((dev, dtype))
        if table is None or table[0].shape[0] < top:
            hd = self.cfg.head_dim
            exponent = torch.arange(0, hd, 2, dtype=torch.int64, device=dev).float() / hd
            inv_freq = 1.0 / (self.cfg.rope_theta**exponent)  # (hd/2,)
            size = -(-top // ROPE_BLOCK) * ROPE_BLOCK
            freqs = torch.arange(size, device=dev).float()[:, None] * inv_freq  # (N, hd/2)
            emb = torch.cat([freqs, freqs], dim=-1)  # (N, hd)
            table = (emb.cos().to(dtype), emb.sin().to(dtype))
            self._rope_table[(dev, dtype)] = table
        return table[0][positions].unsqueeze(-2), table[1][positions].unsqueeze(-2)  # (*lead, 1, hd)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Run all layers on x (*lead, H) at these positions (*lead): rows (R, Q, H), or packed tokens (N, H)
        whose `attend` knows the rows."""
        lead, hidden = x.shape[:-1], x.shape[-1]
        nh, nkv, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        cos, sin = self._rope(positions, x.dtype)
        for i, layer in enumerate(self.llm.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = self._rotate(attn.q_proj(h).view(*lead, nh, hd), cos, sin)
            k = self._rotate(attn.k_proj(h).view(*lead, nkv, hd), cos, sin)
            v = attn.v_proj(h).view(*lead, nkv, hd)
            out = attend(i, q, k, v)
            del q, k, v, h
            x = x + attn.o_proj(out.reshape(*lead, hidden))
            del out
            x = x + self._mlp(layer, x)
        return self.llm.model.norm(x)

    def _mlp(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's norm + SwiGLU MLP over x (*lead, H), at most `mlp_rows` token rows per call: contiguous
        slices of the flat (tokens, H) view, sizes within one of each other (never a small remainder: BLAS rounds
        differently below 4 rows), so each row meets the same kernels as in one call."""
        hidden = x.shape[-1]
        rows = x.numel() // hidden
        if self.mlp_rows is None or rows <= self.mlp_rows:
            return layer.mlp(layer.post_attention_layernorm(x))
        parts = -(-rows // self.mlp_rows)
        flat = x.reshape(rows, hidden)
        out = torch.empty_like(flat)
        for i in range(parts):
            s, e = i * rows // parts, (i + 1) * rows // parts
            out[s:e] = layer.mlp(layer.post_attention_layernorm(flat[s:e]))
        return out.view(x.shape)

    def _cached(self, kv: KVBuffer) -> Attend:
        """Causal attention from slot 0 that writes the pass's K/V at slots [0, Q) of `kv` (the prefix pass)."""

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            end = q.shape[1]
            kv.keys[i][:, :, :end] = k.transpose(1, 2)
            kv.values[i][:, :, :end] = v.transpose(1, 2)
            keys, values = kv.keys[i][:, :, :end], kv.values[i][:, :, :end]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, is_causal=True, enable_gqa=True)
            return out.transpose(1, 2)

        return attend

    def _grouped(self, groups: list[ChunkGroup], masks: list[torch.Tensor]) -> Attend:
        """Attention of each row group over its own prefix (read where it is held) and its n chunk tokens, on
        packed tokens (N, heads, hd): the shapes it has alone, so batch-mates change none of its bits."""
        nh, nkv = self.cfg.num_heads, self.cfg.num_kv_heads

        def expanded(i: int, g: ChunkGroup, chunk: torch.Tensor, which: str) -> torch.Tensor:
            """(b-a, nh, t+n, hd): the group's prefix K (or V) then its chunk's (b-a, n, nkv, hd), kv heads
            repeated for GQA."""
            b, hd = g.b - g.a, chunk.shape[-1]
            out = chunk.new_empty(b, nkv, nh // nkv, g.t + g.n, hd)
            row = 0
            for run in g.runs:
                src = getattr(run.kv, which)[i][run.first : run.first + run.count, :, : g.t]  # (count, nkv, t, hd)
                out[row : row + run.count, :, :, : g.t] = src[:, :, None]
                row += run.count
            out[:, :, :, g.t :] = chunk.transpose(1, 2)[:, :, None]
            return out.view(b, nh, g.t + g.n, hd)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(q)
            for g, mask in zip(groups, masks, strict=True):
                span, rows = slice(g.first, g.first + (g.b - g.a) * g.n), (g.b - g.a, g.n)
                keys = expanded(i, g, k[span].view(*rows, nkv, -1), "keys")
                values = expanded(i, g, v[span].view(*rows, nkv, -1), "values")
                part = F.scaled_dot_product_attention(q[span].view(*rows, nh, -1).transpose(1, 2), keys, values,
                                                      attn_mask=mask)  # (b-a, nh, n, hd)
                out[span] = part.transpose(1, 2).reshape(-1, nh, part.shape[-1])
            return out

        return attend

    def new_buffer(self, rows: int, capacity: int, like: torch.Tensor, zeroed: bool = False) -> KVBuffer:
        """Uninitialized unless `zeroed`: a masked attention over slots never written must read finite values
        (its zero weights times a NaN left in free memory are NaN)."""
        shape = (rows, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        n = self.cfg.num_layers

        def mk() -> list[torch.Tensor]:
            return [like.new_zeros(shape) if zeroed else like.new_empty(shape) for _ in range(n)]

        return KVBuffer(mk(), mk(), 0)

    def prefix(self, embeds: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, KVBuffer]:
        """Causal pass over right-padded rows (R, T, H), positions 0..T-1 -> (last hidden (R, T, H), buffer)."""
        r, t, _ = embeds.shape
        kv = self.new_buffer(r, capacity or t, embeds)
        positions = torch.arange(t, device=embeds.device).expand(r, t)
        hidden = self._layers(embeds, positions, self._cached(kv))
        kv.prefix_len = t
        return hidden, kv

    def extend_rows(self, x: torch.Tensor, kv: KVBuffer, rows: list[int], at: list[int]) -> torch.Tensor:
        """One new token per row for rows at different lengths (token-level continuous batching): x (R, 1, H) is
        the token of slab row `rows[r]` at slot `at[r]`. Each row holds its prompt unpadded from slot 0, so a slot
        is also the token's position (host lists: the widest row is known without a device sync). Writes the token's K/V at its slot and attends to slots [0, slot] of
        its own row: one attention call per layer over the widest row, the rest masked (the padding is the
        difference between the longest and each row; nothing of it reaches a row's result but rounding)."""
        r, dev = x.shape[0], x.device
        nh, nkv = self.cfg.num_heads, self.cfg.num_kv_heads
        index, slots = torch.tensor(rows, device=dev), torch.tensor(at, device=dev)
        width = max(at) + 1
        mask = (torch.arange(width, device=dev)[None] <= slots[:, None])[:, None, None]  # (R, 1, 1, W)
        first = rows[0]
        in_order = rows == list(range(first, first + r))  # the usual case: a slice, not a gather

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kv.keys[i][index, :, slots] = k[:, 0]
            kv.values[i][index, :, slots] = v[:, 0]
            if in_order:
                keys, values = kv.keys[i][first : first + r, :, :width], kv.values[i][first : first + r, :, :width]
            else:
                keys = kv.keys[i][:, :, :width].index_select(0, index)
                values = kv.values[i][:, :, :width].index_select(0, index)
            keys, values = (t.repeat_interleave(nh // nkv, dim=1) for t in (keys, values))
            return F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask).transpose(1, 2)

        return self._layers(x, slots[:, None], attend)

    def chunk(self, x: torch.Tensor, text_mask: torch.Tensor, groups: list[ChunkGroup]) -> torch.Tensor:
        """A MAR step's chunk over ragged rows, packed: x (N, H) holds each group's (b-a)·n tokens from its
        `first` on, rows one after another. Rows [a, b) of a group attend to their t real prefix tokens (pads
        excluded by `text_mask` (R, T)) and causally to their n chunk tokens; positions continue from each row's
        real length. -> (N, H). The chunk's K/V are never stored (nothing reuses them)."""
        masks, positions = [], []
        lengths = text_mask.sum(dim=1)  # (R,) T_r
        for g in groups:
            causal = torch.ones(g.n, g.n, dtype=torch.bool, device=x.device).tril()
            mask = torch.cat([text_mask[g.a : g.b, None, : g.t].expand(-1, g.n, -1),
                              causal.expand(g.b - g.a, -1, -1)], dim=2)
            masks.append(mask[:, None])  # (b-a, 1, n, t+n)
            positions.append((lengths[g.a : g.b, None] + torch.arange(g.n, device=x.device)).reshape(-1))
        return self._layers(x, torch.cat(positions), self._grouped(groups, masks))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)



class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights and one scale per output channel (symmetric, max |w| -> 127), dequantized
    into the activations' dtype inside each call: half the bytes of bf16 weights at rest, one layer's weight
    in the model dtype for the length of its matmul."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1).float().clamp(min=torch.finfo(torch.float32).tiny) / 127  # (out,)
        self.register_buffer("weight_int8", torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(w.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        return F.linear(x, weight, self.bias)


INT8_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")


def quantize_int8(llm: Qwen2ForCausalLM) -> None:
    """Opt-in weight-only int8 for the LLM's decoder linears (q/k/v/o and the SwiGLU MLP, 85% of its weights):
    each becomes an `Int8Linear`, in place. Their bytes halve (2.44 -> 1.22 GiB at bf16 on the full model) for a
    small drift (`python -m bench.memory --drift`). The token embedding (a lookup, tied to lm_head), the norms and
    everything outside the LLM stay as they are. Off unless asked for (`load_engine(int8=True)`)."""
    for layer in llm.model.layers:
        for name in INT8_LINEARS:
            parent, attr = name.split(".")
            owner = getattr(layer, parent)
            setattr(owner, attr, Int8Linear(getattr(owner, attr)))
