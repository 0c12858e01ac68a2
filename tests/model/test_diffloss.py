"""Diffusion head network (spec §3.5): names and shapes, timestep sinusoid, CFG mixing."""

from __future__ import annotations

import math

import torch

from model.config import UNIPIC_1_5B, DiffLossConfig
from model.diffloss import SimpleMLPAdaLN, cfg_mix, timestep_embedding


def test_official_names_and_shapes():
    with torch.device("meta"):
        net = SimpleMLPAdaLN(UNIPIC_1_5B.diffloss, 1280)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["time_embed.mlp.0.weight"] == (1536, 256)
    assert shapes["res_blocks.11.adaLN_modulation.1.weight"] == (4608, 1536)
    assert shapes["final_layer.adaLN_modulation.1.weight"] == (3072, 1536)
    assert shapes["final_layer.linear.weight"] == (32, 1536)
    assert not any(k.startswith("final_layer.norm_final") for k in shapes)
    assert 148e6 < sum(p.numel() for p in net.parameters()) < 154e6


def test_timestep_embedding_cos_half_first():
    emb = timestep_embedding(torch.tensor([0, 999]))
    assert emb.shape == (2, 256)
    assert torch.all(emb[0, :128] == 1) and torch.all(emb[0, 128:] == 0)
    f5 = math.exp(-math.log(10000) * 5 / 128)
    assert abs(emb[1, 5].item() - math.cos(999 * f5)) < 1e-4
    assert abs(emb[1, 128 + 5].item() - math.sin(999 * f5)) < 1e-4


def test_cfg_mix_uses_eps_only_and_keeps_cond_v():
    cond = torch.cat([torch.full((2, 16), 3.0), torch.full((2, 16), 0.5)], dim=1)
    uncond = torch.cat([torch.full((2, 16), 1.0), torch.full((2, 16), -0.5)], dim=1)
    out = cfg_mix(torch.cat([cond, uncond]), 2.0, 16)
    assert out.shape == (2, 32)
    assert torch.all(out[:, :16] == 1.0 + 2.0 * (3.0 - 1.0)) and torch.all(out[:, 16:] == 0.5)


def test_forward_embedded_equals_forward():
    torch.manual_seed(0)
    net = SimpleMLPAdaLN(DiffLossConfig(width=80, depth=2), 48)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, c = torch.randn(3, 16), torch.tensor([0, 333, 999]), torch.randn(3, 48)
    y = net.time_embed(t) + net.cond_embed(c)
    torch.testing.assert_close(net(x, t, c), net.forward_embedded(x, y))
