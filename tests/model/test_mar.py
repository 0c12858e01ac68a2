"""MAR encoder/decoder (spec §3.3) and positional-embedding interpolation (spec §3.4) on the tiny config."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import TINY
from model.mar import MAR, interpolate_pos_embed
from model.unipic import UniPic, init_random_


def tiny_mar() -> MAR:
    model = UniPic(TINY)
    init_random_(model, 3)
    return model.mar.eval()


def test_pos_embed_identity_at_native_grid_and_shape_elsewhere():
    table = torch.randn(1, 4 + 16, 48)
    assert interpolate_pos_embed(table, 4, (4, 4)) is table
    out = interpolate_pos_embed(table, 4, (8, 8))
    assert out.shape == (1, 4 + 64, 48)
    torch.testing.assert_close(out[:, :4], table[:, :4])  # buffer rows untouched
    image = table[:, 4:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    expected = F.interpolate(image, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 4:], expected.permute(0, 2, 3, 1).reshape(1, 64, 48))


def test_pos_embed_cache_reuses_tables():
    mar = tiny_mar()
    first = mar.pos_embeds((8, 8))
    assert mar.pos_embeds((8, 8))[0] is first[0]
    assert first[2].shape == (1, 64, 48) and mar.pos_embeds((4, 4))[2].shape == (1, 16, 48)


def test_encoder_keeps_buffers_plus_visible_and_decoder_returns_all_positions():
    mar = tiny_mar()
    tokens = torch.randn(3, 64, 16)
    visible = torch.tensor([[1, 5, 9], [0, 2, 63], [10, 11, 12]])
    with torch.no_grad():
        x = mar.encode(tokens, visible, (8, 8))
        z = mar.decode(x, visible, (8, 8))
    assert x.shape == (3, 4 + 3, 48) and z.shape == (3, 64, 48)


def test_encoder_ignores_masked_token_values():
    # Changing a masked (not visible) token must not change anything: it is dropped before the blocks.
    mar = tiny_mar()
    tokens = torch.randn(1, 16, 16)
    visible = torch.tensor([[0, 3, 7]])
    changed = tokens.clone()
    changed[0, 5] += 10
    with torch.no_grad():
        torch.testing.assert_close(mar.encode(tokens, visible, (4, 4)), mar.encode(changed, visible, (4, 4)))


def test_decoder_fill_is_mask_token_or_condition():
    mar = tiny_mar()
    x = torch.randn(1, 4 + 2, 48)
    visible = torch.tensor([[0, 1]])
    con = torch.randn(1, 4 + 16, 48)
    with torch.no_grad():
        plain = mar.decode(x, visible, (4, 4))
        edited = mar.decode(x, visible, (4, 4), con)
    assert not torch.allclose(plain, edited)
