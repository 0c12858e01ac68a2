"""The UniPic-1 module tree: `llm`, `mar` (with `mar.diffloss`), `proj_in`, `proj_out`, `vae`, optional SigLIP2.

Owns the composition and the official top-level names so `pytorch_model.bin` + `kl16.ckpt` load 1:1 (spec §3.1),
plus the deterministic random initialisation used for the tiny test model. No sampling logic lives here.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import UniPicConfig
from model.llm import build_llm
from model.mar import MAR
from model.vae import AutoencoderKL


def bridge(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.SiLU(), nn.Linear(hidden, cout))


class SiglipTower(nn.Module):
    """Holds the vision transformer as `vision_model` so keys read `siglip2.vision_model.*` as in the checkpoint
    (transformers 5 flattened `SiglipVisionModel`, older versions nest it under `vision_model`)."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision_model = getattr(vision, "vision_model", vision)


def build_siglip(cfg: UniPicConfig) -> nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    s = cfg.siglip
    return SiglipTower(SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            image_size=s.image_size,
            patch_size=s.patch_size,
            layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
        )
    ))


class UniPic(nn.Module):
    def __init__(self, cfg: UniPicConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h = cfg.mar.width, cfg.llm.hidden_size
        self.llm = build_llm(cfg.llm)
        self.mar = MAR(cfg.mar, cfg.diffloss)
        self.proj_in = bridge(d, h, h)
        self.proj_out = bridge(h, h, d)
        self.vae = AutoencoderKL(cfg.vae)
        if cfg.with_siglip:
            self.siglip2 = build_siglip(cfg)
            self.siglip2_proj = bridge(cfg.siglip.hidden_size, h, h)

    def tie_lm_head(self) -> None:
        self.llm.lm_head.weight = self.llm.model.embed_tokens.weight

    def reset_rotary(self, device: torch.device) -> None:
        """Recreate HF's non-persistent rotary buffers (left uninitialised by a meta-device build)."""
        rotary = self.llm.model.rotary_emb
        self.llm.model.rotary_emb = type(rotary)(config=self.llm.config).to(device)


def module_parameter_counts(model: UniPic) -> dict[str, int]:
    """Parameter counts per top-level module (tied lm_head counted once, inside `llm`)."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    counts = {
        "llm": count(model.llm),
        "mar": count(model.mar),
        "mar.diffloss": count(model.mar.diffloss),
        "vae": count(model.vae),
        "proj_in": count(model.proj_in),
        "proj_out": count(model.proj_out),
    }
    if hasattr(model, "siglip2"):
        counts["siglip2"] = count(model.siglip2)
        counts["siglip2_proj"] = count(model.siglip2_proj)
    return counts


def init_random_(model: UniPic, seed: int) -> None:
    """Fill every parameter from one CPU generator, in sorted-name order: identical in every process.

    Norm weights 1, biases and ≥2-D weights ~ N(0, σ) with σ = fan_in^-1/2 (0.02 for embedding tables).
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    tables = ("embed_tokens", "pos_embed", "fake_latent", "mask_token", "class_emb", "position_embedding")
    norm_names = ("norm", "_ln", "layernorm", "layer_norm")
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 2)
            is_norm = any(n in leaf[-2].lower() for n in norm_names) if len(leaf) > 1 else False
            if is_norm and name.endswith("weight"):
                param.fill_(1.0)
                continue
            if any(t in name for t in tables):
                std = 0.02
            elif param.dim() >= 2:
                std = param[0].numel() ** -0.5
            else:
                std = 0.02
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32, device=device) * std)
