"""Our cached Qwen2 forward equals transformers' forward: prefix pass, padded chunk passes, decoding steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import TINY
from model.llm import ChunkGroup, KVBuffer, PrefixRun, QwenRunner, build_llm


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


def test_token_steps_of_rows_at_different_lengths_equal_full_passes():
    # Given a slab whose rows hold prompts of 5 and 3 tokens (each prefilled alone, from slot 0), decoding steps
    # that advance the rows at different slots, in slab order, reversed, or one row alone, must each equal HF's
    # forward over that row's prompt and tokens so far
    run = runner()
    prompts, toks = [torch.randn(1, 5, 64), torch.randn(1, 3, 64)], torch.randn(2, 4, 64)
    with torch.no_grad():
        slab = run.new_buffer(2, 9, prompts[0], zeroed=True)
        for row, x in enumerate(prompts):
            _, kv = run.prefix(x)
            for src, dst in zip(kv.keys + kv.values, slab.keys + slab.values, strict=True):
                dst[row, :, : x.shape[1]] = src[0]
        done = [0, 0]
        for rows in ([0], [0, 1], [1, 0], [1], [0, 1]):
            slots = [prompts[r].shape[1] + done[r] for r in rows]
            x = torch.stack([toks[r, done[r]] for r in rows])[:, None]
            out = run.extend_rows(x, slab, rows, slots)
            for n, r in enumerate(rows):
                done[r] += 1
                full = torch.cat([prompts[r], toks[r : r + 1, : done[r]]], dim=1)
                ref = run.llm.model(inputs_embeds=full).last_hidden_state[0, -1]
                torch.testing.assert_close(out[n, 0], ref, rtol=1e-5, atol=1e-5)
    assert done == [4, 4]


def copied_buffer_attention(prefixes: list[KVBuffer], text_mask: torch.Tensor,
                            groups: list[tuple[int, int, int, int]]):
    """The MAR step's attention before issue 26's cuts: every item's prefix K/V copied into one (R, T+Q) buffer,
    the chunk's K/V written after each group's prefix, kv heads repeated, one SDPA per group."""
    width = max(kv.prefix_len for kv in prefixes)

    def attend(i, q, k, v):
        r, q_len = q.shape[0], q.shape[2]
        keys = k.new_zeros(r, k.shape[1], width + q_len, k.shape[3])
        values = torch.zeros_like(keys)
        row = 0
        for kv in prefixes:
            n = kv.keys[i].shape[0]
            keys[row : row + n, :, : kv.prefix_len], values[row : row + n, :, : kv.prefix_len] = kv.keys[i], kv.values[i]
            row += n
        out = torch.zeros_like(q)
        for a, b, t, n in groups:
            keys[a:b, :, t : t + n], values[a:b, :, t : t + n] = k[a:b, :, :n], v[a:b, :, :n]
            ks, vs = (c[a:b, :, : t + n].repeat_interleave(q.shape[1] // k.shape[1], dim=1) for c in (keys, values))
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            mask = torch.cat([text_mask[a:b, None, :t].expand(-1, n, -1), causal.expand(b - a, -1, -1)], dim=2)
            out[a:b, :, :n] = F.scaled_dot_product_attention(q[a:b, :, :n], ks, vs, attn_mask=mask[:, None])
        return out

    return attend


def test_chunk_reads_each_prefix_where_held_with_the_bits_of_a_copied_buffer():
    # Before the memory cuts (issue 26) a MAR step copied every item's prefix K/V into one (R, T+P+L) buffer and
    # wrote the chunk's K/V into it; now each group reads its items' own buffers and the chunk's K/V live for one
    # layer. The output must have exactly the bits of the copied buffer (two items, prefix lengths 7 and 5, the
    # second item's chunk shorter: ragged rows).
    run = runner()
    x, y = torch.randn(2, 7, 64), torch.randn(1, 5, 64)
    mask = torch.tensor([[True] * 7, [True] * 6 + [False], [True] * 5 + [False] * 2])
    chunk = torch.randn(3, 6, 64)
    with torch.no_grad():
        held = [run.prefix(x)[1], run.prefix(y)[1]]
        copied = copied_buffer_attention(held, mask, [(0, 2, 7, 6), (2, 3, 5, 4)])

        def old(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # rows (R, Q, heads, hd)
            return copied(i, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

        ref = run._layers(chunk, mask.sum(dim=1)[:, None] + torch.arange(6), old)  # padded rows (3, 6, 64)
        # packed: the first group's 2 x 6 tokens, then the second's 1 x 4 (no padding)
        packed = torch.cat([chunk[:2].reshape(-1, 64), chunk[2, :4]])
        out = run.chunk(packed, mask, [ChunkGroup(0, 2, 7, 6, [PrefixRun(held[0], 0, 2)], 0),
                                       ChunkGroup(2, 3, 5, 4, [PrefixRun(held[1], 0, 1)], 12)])
        assert out.shape == (16, 64)
        assert torch.equal(out, torch.cat([ref[:2].reshape(-1, 64), ref[2, :4]]))
        # a group may take its rows from several buffers, or from part of one
        two = chunk[:2].reshape(-1, 64)
        parts = run.chunk(two, mask[:2], [ChunkGroup(0, 2, 7, 6, [PrefixRun(held[0], 0, 1), PrefixRun(held[0], 1, 1)])])
        assert torch.equal(parts, run.chunk(two, mask[:2], [ChunkGroup(0, 2, 7, 6, [PrefixRun(held[0], 0, 2)])]))


def test_mlp_in_row_slices_has_the_bits_of_one_call():
    # The SwiGLU MLP runs over at most `mlp_rows` token rows per call (issue 26: its intermediates were the MAR
    # step's peak); every row must come out with the same bits as in one call, the prefix pass included.
    run = runner()
    x = torch.randn(3, 19, 64)
    with torch.no_grad():
        run.mlp_rows = None
        whole, kv_whole = run.prefix(x)
        run.mlp_rows = 8  # 57 rows -> 8 slices of 7-8 rows
        sliced, kv_sliced = run.prefix(x)
    assert torch.equal(sliced, whole)
    assert all(torch.equal(a, b) for a, b in zip(kv_sliced.keys, kv_whole.keys, strict=True))
