"""KL-16 autoencoder (LDM style, spec §3.7): pixels in [-1, 1] <-> 16-channel latents at stride 16.

Owns the conv network and the 0.2325 latent scale; official names `encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*` (prefixed `vae.` inside UniPic, bare inside `kl16.ckpt`). Attention uses SDPA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VAEConfig


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


# Feature maps above this many pixels run GroupNorm -> SiLU -> 3x3 conv (and nearest upsample -> conv) in bands of
# rows with a one-row overlap, so no full-size normalised, activated or upsampled copy is ever made: the decoder's
# and encoder's transients then hold about two feature maps instead of four or five (bench/memory.py). Smaller maps
# (every map of a 256 px image) take the plain path. The GroupNorm statistics are still those of the whole map,
# computed apart in float32: pixels agree with the plain path within one uint8 level (tests/model/test_vae.py).
BAND_PIXELS = 2**16


def banded(x: torch.Tensor) -> bool:
    return x.shape[-2] * x.shape[-1] > BAND_PIXELS


def group_stats(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift (1, C, 1, 1) per image that apply `norm` with the whole map's statistics."""
    n, c = x.shape[:2]
    groups = x.reshape(n, norm.num_groups, -1)  # (N, G, C/G·H·W)
    moments = [torch.var_mean(groups[:, g].float(), dim=1, unbiased=False) for g in range(norm.num_groups)]
    var, mean = (torch.stack(m, dim=1) for m in zip(*moments, strict=True))  # (N, G): one group in float32 at once
    rstd = torch.rsqrt(var + norm.eps)
    per = c // norm.num_groups
    scale = rstd.repeat_interleave(per, dim=1) * norm.weight.float()  # (N, C)
    shift = norm.bias.float() - mean.repeat_interleave(per, dim=1) * scale
    return scale[..., None, None], shift[..., None, None]


def band_conv(rows: Callable[[int, int], torch.Tensor], height: int, conv: nn.Conv2d, out: torch.Tensor,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """out[:, :, a:b] = conv(rows)[a:b] (+ residual) band by band; `rows(a, b)` gives input rows [a, b) of the
    conv's input, a map `height` rows high. A 3x3 conv with padding 1 reads one row either side of its band."""
    step = max(1, BAND_PIXELS // out.shape[-1])
    for a in range(0, height, step):
        b = min(a + step, height)
        lo, hi = max(a - 1, 0), min(b + 1, height)
        x = F.pad(rows(lo, hi), (0, 0, lo - (a - 1), (b + 1) - hi))  # zero rows outside the map
        y = F.conv2d(x, conv.weight, conv.bias, padding=(0, 1))
        if residual is not None:
            y = y + residual[:, :, a:b]
        out[:, :, a:b] = y
    return out


def norm_silu_conv(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """conv(silu(norm(x))) (+ residual); in bands when the map is large. The result may be written over
    `residual` (the caller's block input, not used after)."""
    if not banded(x):
        h = conv(F.silu(norm(x)))
        return h if residual is None else residual + h
    scale, shift = group_stats(norm, x)

    def rows(a: int, b: int) -> torch.Tensor:
        return F.silu((x[:, :, a:b].float() * scale + shift).to(x.dtype))

    same = residual is not None and residual.shape[1] == conv.out_channels and residual is not x
    out = residual if same else x.new_empty(x.shape[0], conv.out_channels, *x.shape[2:])
    return band_conv(rows, x.shape[-2], conv, out, residual)


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
        if not banded(x):
            h = self.conv1(F.silu(self.norm1(x)))
            h = self.conv2(F.silu(self.norm2(h)))
            shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
            return shortcut + h
        h = norm_silu_conv(self.norm1, self.conv1, x)
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return norm_silu_conv(self.norm2, self.conv2, h, residual=shortcut)


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
        if not banded(x):
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only
        height, width = x.shape[-2] // 2, x.shape[-1] // 2
        out = x.new_empty(x.shape[0], self.conv.out_channels, height, width)
        step = max(1, BAND_PIXELS // x.shape[-1])
        for a in range(0, height, step):  # output rows [a, b) read input rows [2a, 2b], the last one padding
            b = min(a + step, height)
            rows = x[:, :, 2 * a : 2 * b + 1]
            out[:, :, a:b] = self.conv(F.pad(rows, (0, 1, 0, 2 * b + 1 - 2 * a - rows.shape[-2])))
        return out


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        if height * width <= BAND_PIXELS:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

        def rows(a: int, b: int) -> torch.Tensor:  # rows [a, b) of the upsampled map
            up = F.interpolate(x[:, :, a // 2 : (b + 1) // 2], scale_factor=2.0, mode="nearest")
            return up[:, :, a % 2 : a % 2 + b - a]

        out = x.new_empty(x.shape[0], self.conv.out_channels, height, width)
        return band_conv(rows, height, self.conv, out)


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
        return norm_silu_conv(self.norm_out, self.conv_out, h)


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
        return norm_silu_conv(self.norm_out, self.conv_out, h)


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
