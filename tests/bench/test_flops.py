"""The FLOP count behind "achieved TFLOP/s" reproduces issue 20's hand count for the full-size model."""

from __future__ import annotations

import pytest

from bench.flops import achieved_tflops, image_flops
from model.config import TINY, UNIPIC_1_5B


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
