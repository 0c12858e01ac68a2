"""Choosing the next token for understanding (spec §7.1): greedy or temperature sampling, per row.

Owns the per-row rules of a decode step: the repetition penalty over generated tokens only, and each item's own
generator for sampling (so a row's draws never depend on its batch-mates). The token loop over the LLM, with
stop and length limits, is `model.engine.decode_set`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeRow:
    id: str
    max_new_tokens: int
    temperature: float
    generator: torch.Generator


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF rule on already generated tokens: divide positive logits, multiply negative ones."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def choose(logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
    """Next token per row: argmax at temperature 0, else a draw from the row's own generator (on CPU)."""
    picks = logits.argmax(dim=-1).tolist()
    for r, row in enumerate(rows):
        if row.temperature > 0:
            probs = torch.softmax(logits[r].float().cpu() / row.temperature, dim=-1)
            picks[r] = int(torch.multinomial(probs, 1, generator=row.generator))
    return picks
