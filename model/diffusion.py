"""Gaussian diffusion for the per-token head: the respaced cosine schedule and the reverse loop (spec §4).

Owns the numbers (float64 schedule, float32 application) and the sampling arithmetic. It draws no random
numbers itself: callers pass the initial state and the per-step noise, each drawn from the owning item's
`torch.Generator`, so results never depend on batch composition or on device RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def base_betas(num_steps: int = 1000, max_beta: float = 0.2) -> np.ndarray:
    """Cosine schedule (s = 0.008) clipped at `max_beta` (UniPic uses 0.2), float64."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_steps: int, respacing: str) -> list[int]:
    """Used original timesteps for a respacing string like "100" or "25,25" (improved-diffusion rule)."""
    sections = [int(x) for x in respacing.split(",")]
    size_per = num_steps // len(sections)
    extra = num_steps % len(sections)
    start = 0
    used: list[int] = []
    for i, count in enumerate(sections):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            used.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(used))


@dataclass(frozen=True)
class DiffusionSchedule:
    """Respaced schedule: `timesteps[k]` is the original index fed to the network at respaced step k."""

    timesteps: tuple[int, ...]
    betas: np.ndarray  # β'_k, float64
    log_betas: np.ndarray
    posterior_log_variance_clipped: np.ndarray  # ℓ_k
    posterior_mean_coef1: np.ndarray  # c1_k
    posterior_mean_coef2: np.ndarray  # c2_k
    sqrt_recip_alphas_cumprod: np.ndarray  # r_k
    sqrt_recipm1_alphas_cumprod: np.ndarray  # q_k

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def create(cls, num_train_steps: int = 1000, respacing: str = "100", max_beta: float = 0.2) -> DiffusionSchedule:
        base = base_betas(num_train_steps, max_beta)
        alphas_cumprod = np.cumprod(1.0 - base)
        used = space_timesteps(num_train_steps, respacing)
        last = 1.0
        new_betas = []
        for t in used:
            new_betas.append(1 - alphas_cumprod[t] / last)
            last = alphas_cumprod[t]
        betas = np.array(new_betas, dtype=np.float64)
        alphas = 1.0 - betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(betas)
        return cls(
            timesteps=tuple(used),
            betas=betas,
            log_betas=np.log(betas),
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
            posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1),
        )


# net(x (N,16) float32, step index k, condition rows) -> (N, 32) eps || v, any float dtype
DenoiseFn = Callable[[torch.Tensor, int], torch.Tensor]


def p_sample_loop(
    schedule: DiffusionSchedule,
    denoise: DenoiseFn,
    x: torch.Tensor,
    noise: torch.Tensor,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """Reverse loop of spec §4.3 over the respaced steps K-1..0.

    x: (N, C) float32 initial state; noise: (K-1, N, C) float32, used at steps K-1..1 in that order
    (noise[i] at step K-1-i); temperature: (N, 1) float32. `denoise(x, k)` returns (N, 2C) with ε then v.
    Returns x̂ at step 0 (N, C) float32.
    """
    channels = x.shape[1]
    num = schedule.num_steps
    for i, k in enumerate(range(num - 1, -1, -1)):
        out = denoise(x, k)
        eps, v = out[:, :channels].float(), out[:, channels:].float()
        x0 = float(schedule.sqrt_recip_alphas_cumprod[k]) * x - float(schedule.sqrt_recipm1_alphas_cumprod[k]) * eps
        mean = float(schedule.posterior_mean_coef1[k]) * x0 + float(schedule.posterior_mean_coef2[k]) * x
        if k == 0:
            x = mean
            break
        frac = (v + 1) / 2
        log_var = frac * float(schedule.log_betas[k]) + (1 - frac) * float(schedule.posterior_log_variance_clipped[k])
        x = mean + torch.exp(0.5 * log_var) * temperature * noise[i]
    return x


def unmask_counts(seq_len: int, num_iter: int) -> list[int]:
    """Tokens committed at each MAR step (spec §5.3); sums to seq_len."""
    masked = seq_len
    counts = []
    for step in range(num_iter):
        if step == num_iter - 1:
            nxt = 0
        else:
            target = math.floor(seq_len * math.cos(math.pi / 2 * (step + 1) / num_iter))
            nxt = max(1, min(masked - 1, target))
        counts.append(masked - nxt)
        masked = nxt
    return counts


def masked_after(seq_len: int, num_iter: int) -> list[int]:
    """M_{s+1} for each step s (still masked after the step; 0 after the last)."""
    out, masked = [], seq_len
    for count in unmask_counts(seq_len, num_iter):
        masked -= count
        out.append(masked)
    return out
