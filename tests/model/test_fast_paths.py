"""Fast paths (issue 20): compiled modules give the eager outputs within float tolerance; eager stays exact."""

from __future__ import annotations

import numpy as np
import torch

from model.config import TINY
from model.diffloss import ResBlock
from model.engine.fast_paths import fast_paths_enabled, hot_modules, set_fast_paths
from model.mar import Block


def test_smallest_compiled_modules_match_eager() -> None:
    # Given a MAR block and a head residual block at the tiny config
    torch.manual_seed(0)
    block = Block(TINY.mar.width, TINY.mar.num_heads, TINY.mar.mlp_ratio).eval()
    res = ResBlock(TINY.diffloss.width).eval()
    x, h, y = torch.randn(2, 9, TINY.mar.width), torch.randn(6, TINY.diffloss.width), torch.randn(6, TINY.diffloss.width)
    with torch.inference_mode():
        eager = (block(x), res(h, y))
        # When compiled with static shapes
        block.compile(dynamic=False)
        res.compile(dynamic=False)
        fast = (block(x), res(h, y))
    # Then they agree within fp32 tolerance
    for a, b in zip(eager, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_hot_modules_cover_every_block() -> None:
    from model.unipic import UniPic

    with torch.device("meta"):
        model = UniPic(TINY)
    names = [n for n, _ in hot_modules(model)]
    m, d = TINY.mar, TINY.diffloss
    assert len(names) == m.encoder_depth + m.decoder_depth + d.depth + 1 + 3 * TINY.llm.num_layers
    assert not fast_paths_enabled(model)


def test_fast_engine_matches_eager_and_switches_back_exactly(engine) -> None:
    from model.inference import GenerateRequest, load_engine

    reqs = [GenerateRequest(str(i), f"prompt {i}", seed=i, size=64, steps=2, num_images=1 + i) for i in range(2)]
    eager = engine.generate(reqs)
    fast = load_engine("tiny", fast=True)
    assert fast_paths_enabled(fast.model)
    compiled = fast.generate(reqs)
    for a, b in zip(eager, compiled, strict=True):
        for x, y in zip(a.images, b.images, strict=True):
            assert np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max() <= 2
    set_fast_paths(fast.model, False)
    assert not fast_paths_enabled(fast.model)
    back = fast.generate(reqs)
    for a, b in zip(eager, back, strict=True):
        assert [np.asarray(x).tobytes() for x in a.images] == [np.asarray(y).tobytes() for y in b.images]
