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

Segments = list[tuple[int, int, int]]  # (first row, end row, length): rows [a, b) hold `length` real tokens


@torch.compiler.disable  # a Python loop over ragged groups: compiled blocks call it eagerly
def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Attention of each row group over its own real length only (q, k, v (B, h, N, hd) -> (B, h, N, hd), zeros
    at padding). Each group gets exactly the shapes it would have alone, so padding changes none of its bits."""
    out = torch.zeros_like(q)
    for a, b, n in segments:
        out[a:b, :, :n] = F.scaled_dot_product_attention(q[a:b, :, :n], k[a:b, :, :n], v[a:b, :, :n])
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, segments: Segments | None = None) -> torch.Tensor:
        """x (B, N, D); segments: ragged rows (see `ragged_attention`), or None when every row is N long."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        if segments is None:
            out = F.scaled_dot_product_attention(q, k, v)  # scale hd^-1/2, no mask
        else:
            out = ragged_attention(q, k, v, segments)
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

    def forward(self, x: torch.Tensor, segments: Segments | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), segments)
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

    def encode(self, tokens: torch.Tensor, visible: torch.Tensor | None, grid: tuple[int, int],
               segments: Segments | None = None) -> torch.Tensor:
        """tokens (R, L, C); visible (R, V) ascending raster indices, or None for all L -> (R, P+V, D).

        Ragged rows: a row with fewer visible tokens pads `visible` with the index L, and `segments` give each
        row group's real length P+V_g; attention then never reaches the padding (its outputs are never used)."""
        r, length = tokens.shape[:2]
        enc_pos = self.pos_embeds(grid)[0]  # (1, P+L, D)
        p, d = self.buffer_size, enc_pos.shape[-1]
        img_pos = enc_pos[:, p:].expand(r, -1, -1)
        # z_proj on all L tokens, then the gather (as the reference): a row count of R·V could fall below BLAS's
        # small-matrix threshold (fewer than 4 rows round differently), and then a row's result would depend on
        # how many rows share the call
        img = self.z_proj(tokens)  # (R, L, D)
        if visible is not None:
            index = visible if segments is None else visible.clamp(max=length - 1)  # pads read a real slot
            img = torch.gather(img, 1, index[..., None].expand(-1, -1, d))  # (R, V, D)
            img_pos = torch.gather(img_pos, 1, index[..., None].expand(-1, -1, d))  # (R, V, D)
        img = img + img_pos
        buf = (self.fake_latent + enc_pos[0, :p]).expand(r, -1, -1)  # (R, P, D)
        x = self.z_proj_ln(torch.cat([buf, img], dim=1))
        for block in self.encoder_blocks:
            x = block(x, segments)
        return self.encoder_norm(x)

    def decode(
        self,
        x_enc: torch.Tensor,
        visible: torch.Tensor | None,
        grid: tuple[int, int],
        con_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_enc (R, P+V, D) -> z (R, L, D). con_embed: decoder_embed(x_con) (R, P+L, D) for editing.
        Padding slots of ragged rows (visible index L) land in a spare last slot that is dropped."""
        _, dec_pos, diff_pos = self.pos_embeds(grid)
        p = self.buffer_size
        y = self.decoder_embed(x_enc)
        r, _, d = y.shape
        length = grid[0] * grid[1]
        if visible is None:
            full = y
        else:
            if con_embed is None:
                full = self.mask_token.to(y.dtype).expand(r, p + length + 1, d).clone()
            else:
                full = torch.cat([con_embed.expand(r, -1, -1), y.new_zeros(r, 1, d)], dim=1)  # (R, P+L+1, D)
            full[:, :p] = y[:, :p]
            full.scatter_(1, (visible + p)[..., None].expand(-1, -1, d), y[:, p:])
            full = full[:, : p + length]  # (R, P+L, D): the spare slot goes
        x = full + dec_pos
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return x[:, p:] + diff_pos
