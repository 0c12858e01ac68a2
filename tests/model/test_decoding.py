"""Understanding decoding helpers (spec §7.1): repetition penalty and per-row choice."""

from __future__ import annotations

import torch

from model.engine.decoding import DecodeRow, apply_repetition_penalty, choose


def test_repetition_penalty_follows_hf_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_choose_greedy_and_seeded_sampling():
    logits = torch.tensor([[0.0, 5.0, 0.0], [1.0, 1.0, 1.0]])

    def rows(seed: int) -> list[DecodeRow]:
        return [DecodeRow("g", 4, 0.0, torch.Generator().manual_seed(seed)),
                DecodeRow("s", 4, 1.0, torch.Generator().manual_seed(seed))]

    draws = [choose(logits, rows(7))[1] for _ in range(3)]
    assert choose(logits, rows(7))[0] == 1 and len(set(draws)) == 1
    assert len({choose(logits, rows(s))[1] for s in range(20)}) > 1
