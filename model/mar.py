"""MAR encoder/decoder over latent tokens (spec §3.3-3.4) with timm-style ViT blocks, official names `mar.*`.

Owns the bidirectional transformer that turns (visible latent tokens, mask) into per-position conditions for
the diffusion head, plus the positional-embedding interpolation cache. It knows nothing of the LLM or sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import DiffLossConfig, MARConfig
from model.diffloss import DiffLoss

Segments = list[tuple[int, int, int]]  # (first row, end row, length): rows [a, b) hold `length` real tokens each
Spans = list[tuple[int, int, int]]  # packed rows: (first token, rows, length), in order, covering a flat (N, D)


def packed_spans(segments: Segments) -> Spans:
    """Where each segment's rows lie in the flat layout that holds every row's real tokens one after another."""
    spans, first = [], 0
    for a, b, length in segments:
        spans.append((first, b - a, length))
        first += (b - a) * length
    return spans


@torch.compiler.disable  # a Python loop over ragged spans: compiled blocks call it eagerly
def packed_attention(qkv: torch.Tensor, spans: Spans, num_heads: int) -> torch.Tensor:
    """qkv (N, 3D) of packed rows -> (N, D): the rows of each span attend over their own tokens only, with the
    shapes they have alone, and no padding is computed anywhere (the row-wise layers run on the N real tokens)."""
    d = qkv.shape[1] // 3
    out = qkv.new_empty(qkv.shape[0], d)
    for first, rows, n in spans:
        end = first + rows * n
        q, k, v = qkv[first:end].view(rows, n, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out[first:end] = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(rows * n, d)
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        """x (B, N, D); or packed ragged rows x (N, D) with their `spans` (see `packed_attention`)."""
        if spans is not None and len(spans) > 1:
            return self.proj(packed_attention(self.qkv(x), spans, self.num_heads))
        if spans is not None:  # one span: alike rows, the plain batched attention (compiles whole with the block)
            _, rows, length = spans[0]
            return self.attend(x.view(rows, length, -1)).view(rows * length, -1)
        return self.attend(x)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), every row N long."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # scale hd^-1/2, no mask
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm 0.9 ViT block: pre-LN (eps 1e-6) attention and GELU MLP, no layer-scale or drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), spans)
        return x + self.mlp(self.norm2(x))


def interpolate_pos_embed(table: torch.Tensor, buffers: int, grid: tuple[int, int]) -> torch.Tensor:
    """(1, buffers + g0², D) -> (1, buffers + m·n, D): bilinear resize of the image part (spec §3.4)."""
    image = table[:, buffers:]
    g0 = round(image.shape[1] ** 0.5)
    if (g0, g0) == tuple(grid):
        return table
    d = table.shape[-1]
    image = image.reshape(1, g0, g0, d).permute(0, 3, 1, 2)  # (1, D, g0, g0)
    image = F.interpolate(image, size=grid, mode="bilinear", align_corners=False)
    image = image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)  # (1, m·n, D) raster order
    return torch.cat([table[:, :buffers], image], dim=1)


class MAR(nn.Module):
    def __init__(self, cfg: MARConfig, diff_cfg: DiffLossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, s0 = cfg.width, cfg.buffer_size, cfg.seq_len
        self.buffer_size = p
        self.class_emb = nn.Embedding(cfg.class_num, d)
        self.fake_latent = nn.Parameter(torch.zeros(1, d))
        self.z_proj = nn.Linear(cfg.token_dim, d, bias=True)
        self.z_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, p + s0, d))
        self.encoder_blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, d, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, p + s0, d))
        self.decoder_blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, s0, d))
        self.diffloss = DiffLoss(diff_cfg, cond_dim=d)
        self._pos_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def pos_embeds(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder, decoder, diffusion) tables for a grid, interpolated once per (grid, dtype, device)."""
        w = self.encoder_pos_embed_learned
        key = (tuple(grid), w.dtype, w.device, w.data_ptr())
        if key not in self._pos_cache:
            p = self.buffer_size
            self._pos_cache[key] = (
                interpolate_pos_embed(self.encoder_pos_embed_learned, p, grid).detach(),
                interpolate_pos_embed(self.decoder_pos_embed_learned, p, grid).detach(),
                interpolate_pos_embed(self.diffusion_pos_embed_learned, 0, grid).detach(),
            )
        return self._pos_cache[key]

    def encode(self, tokens: torch.Tensor, visible: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
        """tokens (R, L, C); visible (R, V) ascending raster indices, or None for all L -> (R, P+V, D)."""
        r, length = tokens.shape[:2]
        n = self.buffer_size + (length if visible is None else visible.shape[1])
        return self.encode_packed(tokens, visible, grid, [(0, r, n)]).view(r, n, -1)

    def encode_packed(self, tokens: torch.Tensor, visible: torch.Tensor | None, grid: tuple[int, int],
                      segments: Segments) -> torch.Tensor:
        """Rows that see different numbers of visible tokens, packed: rows [a, b) of a segment (a, b, P+v) see the
        first v indices of their `visible` row (R, V) (None: all L) -> (N, D), each row's P+v tokens after the
        previous row's, no padding (`packed_spans(segments)` says where each segment's rows lie)."""
        enc_pos = self.pos_embeds(grid)[0]  # (1, P+L, D)
        p, d = self.buffer_size, enc_pos.shape[-1]
        # z_proj on all L tokens, then the gather (as the reference): a row count of R·V could fall below BLAS's
        # small-matrix threshold (fewer than 4 rows round differently), and then a row's result would depend on
        # how many rows share the call
        img = self.z_proj(tokens)  # (R, L, D)
        buf = self.fake_latent + enc_pos[0, :p]  # (P, D)
        parts = []
        for a, b, n in segments:
            if visible is None:
                part = img[a:b] + enc_pos[:, p:]  # (b-a, L, D)
            else:
                index = visible[a:b, : n - p, None].expand(-1, -1, d)
                part = torch.gather(img[a:b], 1, index) + torch.gather(enc_pos[:, p:].expand(b - a, -1, -1), 1, index)
            parts.append(torch.cat([buf.expand(b - a, -1, -1), part], dim=1).reshape(-1, d))
        x = self.z_proj_ln(torch.cat(parts) if len(parts) > 1 else parts[0])  # (N, D)
        spans = packed_spans(segments)
        for block in self.encoder_blocks:
            x = block(x, spans)
        return self.encoder_norm(x)

    def decode(
        self,
        x_enc: torch.Tensor,
        visible: torch.Tensor | None,
        grid: tuple[int, int],
        con_embed: torch.Tensor | None = None,
        segments: Segments | None = None,
    ) -> torch.Tensor:
        """x_enc (R, P+V, D), or packed (N, D) with the `segments` (a, b, P+v) of `encode_packed` -> z (R, L, D).
        con_embed: decoder_embed(x_con) (R, P+L, D) for editing; visible None: x_enc holds all L tokens."""
        _, dec_pos, diff_pos = self.pos_embeds(grid)
        p = self.buffer_size
        y = self.decoder_embed(x_enc)
        d = y.shape[-1]
        if visible is None:
            full = y
        else:
            r, length = visible.shape[0], grid[0] * grid[1]
            if segments is None:
                segments = [(0, r, y.shape[1])]
                y = y.reshape(-1, d)
            fill = self.mask_token.to(y.dtype).expand(r, p + length, d) if con_embed is None else con_embed
            full = fill.expand(r, -1, -1).clone()  # (R, P+L, D), written below
            for (first, rows, n), (a, b, _) in zip(packed_spans(segments), segments, strict=True):
                part = y[first : first + rows * n].view(rows, n, d)
                full[a:b, :p] = part[:, :p]
                full[a:b].scatter_(1, (visible[a:b, : n - p] + p)[..., None].expand(-1, -1, d), part[:, p:])
        x = full + dec_pos
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return x[:, p:] + diff_pos
