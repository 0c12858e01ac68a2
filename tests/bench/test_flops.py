"""The FLOP count behind "achieved TFLOP/s" reproduces issue 20's hand count for the full-size model."""

from __future__ import annotations

import pytest

from bench.flops import _llm_token_flops, _vit_token_flops, achieved_tflops, image_flops, ragged_padding_share
from model.config import TINY, UNIPIC_1_5B
from model.diffusion import masked_after


def test_full_config_1024_32_steps_cfg3_is_about_0_92_pflop() -> None:
    f = image_flops(UNIPIC_1_5B, 1024, 32, 3.0)
    assert f.total == pytest.approx(0.92e15, rel=0.05)
    # the per-part counts: LLM ~0.29, MAR decoder ~0.32, head ~0.23 PFLOP (encoder ~0.08 without attention)
    assert f.llm == pytest.approx(0.29e15, rel=0.05)
    assert f.mar_decoder == pytest.approx(0.32e15, rel=0.05)
    assert f.head == pytest.approx(0.23e15, rel=0.06)
    assert 0.07e15 < f.mar_encoder < 0.11e15


def test_cfg_doubles_and_size_scales() -> None:
    with_cfg, without = image_flops(UNIPIC_1_5B, 512, 32, 3.0), image_flops(UNIPIC_1_5B, 512, 32, 1.0)
    assert with_cfg.total == pytest.approx(2 * without.total)
    assert image_flops(UNIPIC_1_5B, 1024, 32).total > 3.5 * with_cfg.total
    assert image_flops(TINY, 64, 4).total > 0


def test_achieved_tflops() -> None:
    total = image_flops(UNIPIC_1_5B, 1024, 32, 3.0).total
    assert achieved_tflops(UNIPIC_1_5B, 1024, 32, 3.0, 2, 1.0) == pytest.approx(2 * total / 1e12)


def test_padding_ragged_rows_would_cost_a_share_that_grows_with_the_items_spread_over_the_steps() -> None:
    # One item alone, or items all in one phase, pad nothing
    assert ragged_padding_share(UNIPIC_1_5B, 1024, 32, 1) == 0
    shares = [ragged_padding_share(UNIPIC_1_5B, 1024, 32, n) for n in (2, 4, 8)]
    assert 0 < shares[0] < shares[1] < shares[2] < 0.5
    # Two items two steps apart on a 2-step schedule, by hand: each step pads the item at its first phase (buffers
    # only) to the other's visible tokens, through the LLM chunk and the MAR encoder, both CFG rows; two steps
    # finish two images
    cfg, size = TINY, 64
    visible = cfg.tokens_for(size) - masked_after(cfg.tokens_for(size), 2)[0]
    per_token = _llm_token_flops(cfg) + _vit_token_flops(cfg.mar.width, cfg.mar.mlp_ratio, cfg.mar.encoder_depth)
    padding = 2 * visible * per_token * 2
    expected = padding / (padding + 2 * image_flops(cfg, size, 2).total)
    assert ragged_padding_share(cfg, size, 2, 2) == pytest.approx(expected)
