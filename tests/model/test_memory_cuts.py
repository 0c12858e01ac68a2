"""Issue 26's memory cuts leave every output unchanged (fp32, CPU, the tiny model): each switch is run both ways
side by side on the same requests and the final latent tokens must be equal, bit for bit.

- CFG rows in passes (`UniPicEngine.row_passes`, chosen by card fit where one batch does not fit): the cond and
  uncond rows of a step run apart, in two passes of contiguous rows. Row-wise layers give a row the same bits
  whatever the row count as long as BLAS keeps its large-matrix kernels (MKL switches below about 16 rows); the
  full model's 64 buffer tokens per row always keep a pass above that, the tiny model's 4 do not, so the requests
  here give each pass at least 4 rows (16 token rows at the first step).
- The LLM's SwiGLU MLP in slices of rows (`QwenRunner.mlp_rows`): the tiny model's steps never reach the full
  model's 2048 rows, so the test forces slices of a few rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from model.inference import EditRequest, GenerateRequest


@contextmanager
def switched(engine, row_passes: int = 1, mlp_rows: int | None = None) -> Iterator[None]:
    saved = engine.row_passes, engine.runner.mlp_rows
    engine.row_passes = {64: row_passes, 128: row_passes}
    engine.runner.mlp_rows = mlp_rows
    try:
        yield
    finally:
        engine.row_passes, engine.runner.mlp_rows = saved


def final_tokens(engine, kind: str, requests: list) -> dict[str, torch.Tensor]:
    """Run a set with items at different steps (one joins later) to the end -> final tokens per item."""
    rs = engine.open_set(kind, requests[0].size)
    rs.admit(requests[:-1])
    out = {f.id: f.tokens for f in rs.step()}
    rs.admit(requests[-1:])
    while rs.items:
        out.update({f.id: f.tokens for f in rs.step()})
    return out


def generate_requests() -> list[GenerateRequest]:
    return [GenerateRequest("a", "a red fox", seed=1, size=128, steps=4, num_images=4),
            GenerateRequest("b", "a long prompt about a cat on a mat", seed=2, size=128, steps=3, guidance_scale=1.0,
                            num_images=2),
            GenerateRequest("c", "tree", seed=3, size=128, steps=4, guidance_schedule="linear", num_images=2)]


def edit_requests(photos) -> list[EditRequest]:
    return [EditRequest("e", photos[0], "make it blue", seed=4, size=64, steps=4, num_images=4),
            EditRequest("f", photos[1], "add a hat to the dog", seed=5, size=64, steps=3, num_images=2)]


def test_cfg_rows_in_two_passes_equal_one_batch(engine, photos):
    for kind, requests in (("generate", generate_requests()), ("edit", edit_requests(photos))):
        with switched(engine):
            one = final_tokens(engine, kind, requests)
        with switched(engine, row_passes=2):
            apart = final_tokens(engine, kind, requests)
        assert one.keys() == apart.keys() == {r.id for r in requests}
        for key in one:
            assert torch.equal(one[key], apart[key]), (kind, key)


def test_llm_mlp_in_row_slices_equals_one_call(engine, photos):
    for kind, requests in (("generate", generate_requests()), ("edit", edit_requests(photos))):
        with switched(engine, mlp_rows=None):
            whole = final_tokens(engine, kind, requests)
        with switched(engine, mlp_rows=24):
            sliced = final_tokens(engine, kind, requests)
        for key in whole:
            assert torch.equal(whole[key], sliced[key]), (kind, key)
