"""KL-16 autoencoder (LDM style, spec §3.7): pixels in [-1, 1] <-> 16-channel latents at stride 16.

Owns the conv network and the 0.2325 latent scale; official names `encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*` (prefixed `vae.` inside UniPic, bare inside `kl16.ckpt`). Attention uses SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VAEConfig


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = group_norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(n), self.k(n), self.v(n)))  # (B,1,HW,C)
        out = F.scaled_dot_product_attention(q, k, v)  # single head, scale c^-1/2
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mults = (1, *cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            cin, cout = cfg.ch * mults[i], cfg.ch * mult
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks))
            has_attn = cfg.design_resolution // 2**i == cfg.attn_resolution
            level.attn = nn.ModuleList(AttnBlock(cout) for _ in range(cfg.num_res_blocks) if has_attn)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = Mid(top)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = Mid(top)
        levels: list[nn.Module] = []
        cin = top
        for i in reversed(range(len(cfg.ch_mult))):
            level = nn.Module()
            cout = cfg.ch * cfg.ch_mult[i]
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1))
            level.attn = nn.ModuleList()
            if i != 0:
                level.upsample = Upsample(cout)
            cin = cout
            levels.insert(0, level)  # up.{i} indexed by level, executed from the top level down
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, H, W) in [-1, 1] -> scaled posterior mean as tokens (N, H/16, W/16, 16)."""
        moments = self.quant_conv(self.encoder(pixels))  # (N, 32, h, w)
        mean = moments[:, : self.cfg.z_channels]
        return (mean * self.cfg.scale).permute(0, 2, 3, 1)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, m, n, 16) -> pixels (N, 3, 16m, 16n), unclamped."""
        z = (tokens / self.cfg.scale).permute(0, 3, 1, 2)  # (N, 16, m, n)
        return self.decoder(self.post_quant_conv(z))
