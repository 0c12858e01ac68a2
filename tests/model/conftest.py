"""Fixtures for the model tests: one tiny engine per session (random weights, fixed seed), the tiny checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread() -> None:
    """Every model test, whichever of them run: the box has 2 cores shared with other suites (one intra-op thread
    avoids spin-wait contention), and the bit-equality tests hold per thread count (a matmul split over two
    threads rounds by its row count: test_llm's MLP slices failed when run alone, before any engine was built)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def engine():
    from model.inference import load_engine

    return load_engine("tiny")


@pytest.fixture(scope="session")
def tiny_dir(tiny_checkpoint):
    """The session's tiny checkpoint (tests/conftest.py), written once for the model, worker and gateway tests."""
    return tiny_checkpoint


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """Four synthetic RGB images of different sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 12 * i, 70 - 5 * i, 3), dtype=np.uint8)) for i in range(4)]
