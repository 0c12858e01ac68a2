"""Our cached Qwen2 forward equals transformers' forward: prefix pass, padded chunk passes, decoding steps."""

from __future__ import annotations

import torch

from model.config import TINY
from model.llm import QwenRunner, build_llm


def runner() -> QwenRunner:
    torch.manual_seed(0)
    llm = build_llm(TINY.llm).eval()
    return QwenRunner(llm, TINY.llm)


def test_prefix_equals_hf_last_hidden_state():
    run = runner()
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        ref = run.llm.model(inputs_embeds=x).last_hidden_state
        hidden, kv = run.prefix(x)
    torch.testing.assert_close(hidden, ref, rtol=1e-5, atol=1e-5)
    assert kv.prefix_len == 7 and kv.keys[0].shape == (2, 2, 7, 16)


def test_chunk_over_padded_prefix_equals_unpadded_sequence():
    # Given rows of real lengths 7 and 4 right-padded to 7, a chunk pass must equal HF on the unpadded text + chunk.
    run = runner()
    x, chunk = torch.randn(2, 7, 64), torch.randn(2, 3, 64)
    text_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        _, kv = run.prefix(x, capacity=12)
        out = run.extend(chunk, kv, text_mask)
        for r, n in enumerate([7, 4]):
            full = torch.cat([x[r : r + 1, :n], chunk[r : r + 1]], dim=1)
            ref = run.llm.model(inputs_embeds=full).last_hidden_state[0, n:]
            torch.testing.assert_close(out[r], ref, rtol=1e-5, atol=1e-5)
        # the chunk slots are scratch: a second chunk pass gives the same answer
        torch.testing.assert_close(run.extend(chunk, kv, text_mask), out)


def test_incremental_decoding_equals_full_pass():
    run = runner()
    x, toks = torch.randn(1, 5, 64), torch.randn(1, 3, 64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        _, kv = run.prefix(x, capacity=8)
        steps = [run.extend(toks[:, i : i + 1], kv, mask, written=i) for i in range(3)]
        ref = run.llm.model(inputs_embeds=torch.cat([x, toks], dim=1)).last_hidden_state[:, 5:]
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-5, atol=1e-5)
