"""The full-size module tree carries the official names and shapes (spec §3), checked on the meta device."""

from __future__ import annotations

import torch

from model.config import UNIPIC_1_5B
from model.unipic import UniPic


def test_official_keys_and_shapes():
    with torch.device("meta"):
        model = UniPic(UNIPIC_1_5B.with_flags(with_siglip=True))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "llm.model.embed_tokens.weight": (151936, 1536),
        "llm.model.layers.27.self_attn.k_proj.weight": (256, 1536),
        "llm.model.layers.27.self_attn.k_proj.bias": (256,),
        "llm.model.layers.0.mlp.down_proj.weight": (1536, 8960),
        "mar.class_emb.weight": (1000, 1280),
        "mar.fake_latent": (1, 1280),
        "mar.z_proj.weight": (1280, 16),
        "mar.encoder_pos_embed_learned": (1, 1088, 1280),
        "mar.decoder_pos_embed_learned": (1, 1088, 1280),
        "mar.diffusion_pos_embed_learned": (1, 1024, 1280),
        "mar.encoder_blocks.19.attn.qkv.weight": (3840, 1280),
        "mar.decoder_blocks.19.mlp.fc1.weight": (5120, 1280),
        "mar.mask_token": (1, 1, 1280),
        "mar.diffloss.net.cond_embed.weight": (1536, 1280),
        "proj_in.0.weight": (1536, 1280),
        "proj_in.2.weight": (1536, 1536),
        "proj_out.2.weight": (1280, 1536),
        "siglip2_proj.0.weight": (1536, 1152),
        "siglip2.vision_model.embeddings.patch_embedding.weight": (1152, 3, 16, 16),
        "siglip2.vision_model.embeddings.position_embedding.weight": (1024, 1152),
        "siglip2.vision_model.encoder.layers.26.mlp.fc1.weight": (4304, 1152),
        "vae.encoder.conv_in.weight": (128, 3, 3, 3),
        "vae.quant_conv.weight": (32, 32, 1, 1),
        "vae.post_quant_conv.weight": (16, 16, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "llm.model.layers.0.self_attn.o_proj.bias" not in shapes


def test_siglip_only_behind_flag():
    with torch.device("meta"):
        model = UniPic(UNIPIC_1_5B)
    assert not any(k.startswith("siglip2") for k in model.state_dict())
