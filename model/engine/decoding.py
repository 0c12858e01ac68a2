"""Text decoding for understanding (spec §7.1): greedy or temperature sampling from `inputs_embeds`.

Owns the token loop over the cached LLM: right-padded prompts with per-row positions (so a row decodes the same
alone or batched), the repetition penalty over generated tokens only, per-row stop and length limits, per-item
generators for sampling. Token ids in, token ids out; the engine does the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.llm import QwenRunner


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


def decode(
    runner: QwenRunner,
    embeds: torch.Tensor,
    text_mask: torch.Tensor,
    rows: list[DecodeRow],
    stop_ids: tuple[int, ...],
    repetition_penalty: float,
    should_stop: Callable[[], set[str]] = lambda: set(),
    progress: Callable[[list[str], int, int], None] | None = None,
) -> list[list[int] | None]:
    """embeds (R, T, H) right-padded, text_mask (R, T) -> generated ids per row (None if canceled)."""
    r_count = embeds.shape[0]
    limit = max(row.max_new_tokens for row in rows)
    hidden, kv = runner.prefix(embeds, capacity=embeds.shape[1] + limit)
    lengths = text_mask.sum(dim=1)
    logits = runner.logits(hidden[torch.arange(r_count, device=hidden.device), lengths - 1]).float()  # (R, V)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    out: list[list[int] | None] = [[] for _ in rows]
    done = [False] * r_count
    for i in range(limit):
        picks = choose(apply_repetition_penalty(logits, seen, repetition_penalty), rows)
        for r, tok in enumerate(picks):
            if done[r]:
                continue
            if tok in stop_ids:
                done[r] = True
                continue
            tokens = out[r]
            assert tokens is not None  # a canceled row is done
            tokens.append(tok)
            done[r] = len(tokens) >= rows[r].max_new_tokens
        canceled = should_stop()
        for r, row in enumerate(rows):
            if row.id in canceled and out[r] is not None:
                out[r], done[r] = None, True
        if progress is not None:
            progress([row.id for r, row in enumerate(rows) if not done[r]], i + 1, limit)
        if all(done):
            break
        ids = torch.tensor(picks, device=embeds.device)
        seen[torch.arange(r_count, device=seen.device), ids] = True
        h = runner.extend(runner.embed(ids)[:, None], kv, text_mask, written=i)  # (R, 1, H)
        logits = runner.logits(h[:, 0]).float()
    return out
