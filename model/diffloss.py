"""The per-token diffusion head `SimpleMLPAdaLN` (spec §3.5), under the official names `mar.diffloss.net.*`.

Owns only the network and its CFG evaluation; the schedule and reverse loop are in `model.diffusion`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import DiffLossConfig


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid of integer timesteps (N,) -> (N, dim) float32, cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        u = self.in_ln(h) * (1 + scale) + shift
        return h + gate * self.mlp(u)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(h) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """net(x (N,C), t (N,), c (N,Dz)) -> (N, 2C): ε prediction then variance interpolation v."""

    def __init__(self, cfg: DiffLossConfig, cond_dim: int) -> None:
        super().__init__()
        width, channels = cfg.width, cfg.in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(width, 2 * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(x, self.time_embed(t) + self.cond_embed(c))

    def forward_embedded(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward with the summed embedding y = t_emb + cond_embed(c) precomputed (spec §9.1)."""
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)


def cfg_mix(out: torch.Tensor, scale: float | torch.Tensor, channels: int) -> torch.Tensor:
    """CFG on net outputs for rows [cond; uncond]: returns the cond half's (ε_mix || v_cond), (N/2, 2C).

    scale: one float, or (N/2, 1) float32 per row (items with their own guidance share a call); the product is
    taken in float32 and rounded to the output dtype, as a Python float scale is."""
    cond, uncond = out.chunk(2, dim=0)
    diff = cond[:, :channels] - uncond[:, :channels]
    scaled = diff * scale if isinstance(scale, float) else (diff.float() * scale).to(diff.dtype)
    return torch.cat([uncond[:, :channels] + scaled, cond[:, channels:]], dim=1)


class DiffLoss(nn.Module):
    """Container whose only parameters are `net` (kept for the official key prefix `mar.diffloss.net.`)."""

    def __init__(self, cfg: DiffLossConfig, cond_dim: int) -> None:
        super().__init__()
        self.in_channels = cfg.in_channels
        self.net = SimpleMLPAdaLN(cfg, cond_dim)


__all__ = ["DiffLoss", "SimpleMLPAdaLN", "cfg_mix", "timestep_embedding"]
