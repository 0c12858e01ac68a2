"""The Qwen2 LLM: built with transformers' classes (official names `llm.*`), run by our own cached forward.

Owns the forward passes UniPic needs (spec §3.2, §5.2-5.4, §7.1): a causal prefix pass that fills a KV buffer,
and chunk passes that attend to a read-only prefix (pads excluded by `text_mask`) with per-row positions. Doing
this here rather than through `DynamicCache` keeps the prefix immutable, lets rows of different lengths share a
batch without changing any row's result, and makes cancellation a row selection. Math equals HF's Qwen2
(RMSNorm, half-split RoPE in float32, GQA, SwiGLU); `tests/model/test_llm.py` checks it against HF's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from model.config import LLMConfig

ROPE_BLOCK = 256  # positions per block of the cached RoPE table


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


class QwenRunner:
    """Cached forward passes over a `Qwen2ForCausalLM` whose weights it reads but never changes."""

    def __init__(self, llm: Qwen2ForCausalLM, cfg: LLMConfig) -> None:
        self.llm = llm
        self.cfg = cfg
        self._rope_table: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.model.embed_tokens(ids)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (R, 1, Q, hd) for positions (R, Q), read from a table of every position up to a multiple of
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
        return table[0][positions][:, None], table[1][positions][:, None]  # (R, 1, Q, hd)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _layers(
        self, x: torch.Tensor, positions: torch.Tensor, kv: KVBuffer, start: int, mask: torch.Tensor | None,
        ragged: list[tuple[int, int, int, int, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Run all layers on x (R, Q, H) written at slots [start, start+Q); mask None = causal from slot 0.
        ragged: row groups (first row, end row, prefix T, chunk length n, mask (b-a, 1, n, T+n)) whose chunk
        goes to slots [T, T+n) and attends over exactly those T+n slots (see `extend`)."""
        r, q_len, hidden = x.shape
        nh, nkv, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        cos, sin = self._rope(positions, x.dtype)
        end = start + q_len
        for i, layer in enumerate(self.llm.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(r, q_len, nh, hd).transpose(1, 2)  # (R, nh, Q, hd)
            k = attn.k_proj(h).view(r, q_len, nkv, hd).transpose(1, 2)  # (R, nkv, Q, hd)
            v = attn.v_proj(h).view(r, q_len, nkv, hd).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            if ragged is not None:
                out = self._ragged_attention(q, k, v, kv, i, ragged)
            else:
                kv.keys[i][:, :, start:end] = k
                kv.values[i][:, :, start:end] = v
                keys, values = kv.keys[i][:, :, :end], kv.values[i][:, :, :end]
                if mask is None:
                    out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
                else:  # expand kv heads: the masked (memory-efficient) CUDA kernels take no GQA flag
                    keys, values = (t.repeat_interleave(nh // nkv, dim=1) for t in (keys, values))
                    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(r, q_len, hidden))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.llm.model.norm(x)

    def _ragged_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: KVBuffer, layer: int,
                          ragged: list[tuple[int, int, int, int, torch.Tensor]]) -> torch.Tensor:
        """Each row group attends over its own prefix and chunk lengths only -> (R, nh, Q, hd), zeros at padding."""
        groups = self.cfg.num_heads // self.cfg.num_kv_heads
        out = torch.zeros_like(q)
        for a, b, t, n, mask in ragged:
            kv.keys[layer][a:b, :, t : t + n] = k[a:b, :, :n]
            kv.values[layer][a:b, :, t : t + n] = v[a:b, :, :n]
            keys, values = (c[layer][a:b, :, : t + n].repeat_interleave(groups, dim=1) for c in (kv.keys, kv.values))
            out[a:b, :, :n] = F.scaled_dot_product_attention(q[a:b, :, :n], keys, values, attn_mask=mask)
        return out

    def new_buffer(self, rows: int, capacity: int, like: torch.Tensor) -> KVBuffer:
        shape = (rows, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        n = self.cfg.num_layers

        def mk() -> list[torch.Tensor]:
            return [like.new_empty(shape) for _ in range(n)]

        return KVBuffer(mk(), mk(), 0)

    def prefix(self, embeds: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, KVBuffer]:
        """Causal pass over right-padded rows (R, T, H), positions 0..T-1 -> (last hidden (R, T, H), buffer)."""
        r, t, _ = embeds.shape
        kv = self.new_buffer(r, capacity or t, embeds)
        positions = torch.arange(t, device=embeds.device).expand(r, t)
        hidden = self._layers(embeds, positions, kv, 0, None)
        kv.prefix_len = t
        return hidden, kv

    def extend(self, x: torch.Tensor, kv: KVBuffer, text_mask: torch.Tensor, written: int = 0,
               segments: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
        """Chunk x (R, Q, H) at slots prefix_len+written.. attending to real prefix tokens and causally to the
        `written` earlier slots and itself; row r's positions continue from its real length T_r.

        segments (first row, end row, prefix T, chunk length n): ragged rows (MAR steps of items at different
        steps, prompts of different lengths). Rows [a, b) then attend over exactly their T prefix slots and the
        first n chunk tokens, the shapes they have alone, so batch-mates and padding change none of their bits.
        The chunk's later tokens are padding (its outputs are zeros)."""
        r, q_len, _ = x.shape
        start = kv.prefix_len + written
        lengths = text_mask.sum(dim=1)  # (R,) T_r
        positions = lengths[:, None] + written + torch.arange(q_len, device=x.device)[None]  # (R, Q)
        if segments is not None:
            assert written == 0, "ragged chunks are MAR steps: nothing written before them"
            ragged = []
            for a, b, t, n in segments:
                causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
                mask = torch.cat([text_mask[a:b, None, :t].expand(-1, n, -1), causal.expand(b - a, -1, -1)], dim=2)
                ragged.append((a, b, t, n, mask[:, None]))  # mask (b-a, 1, n, T+n)
            return self._layers(x, positions, kv, start, None, ragged)
        causal = torch.ones(q_len, written + q_len, dtype=torch.bool, device=x.device).tril(written)
        mask = torch.cat([text_mask[:, None, :].expand(r, q_len, -1), causal.expand(r, -1, -1)], dim=2)
        return self._layers(x, positions, kv, start, mask[:, None])  # mask (R, 1, Q, start+Q)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)
