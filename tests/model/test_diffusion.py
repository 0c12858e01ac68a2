"""Schedule numbers (spec §4) and unmask counts (spec §5.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.diffusion import DiffusionSchedule, base_betas, p_sample_loop, space_timesteps, unmask_counts


def test_base_betas_clip_at_max_beta_0_2():
    betas = base_betas(1000, 0.2)
    assert betas[0] == pytest.approx(4.1284e-5, rel=1e-4)
    assert betas[1] == pytest.approx(4.6142e-5, rel=1e-4)
    assert betas[988:991] == pytest.approx([0.15971, 0.17354, 0.18999], rel=1e-4)
    assert (betas[991:] == 0.2).all() and (betas[:991] < 0.2).all()
    assert np.prod(1 - betas) == pytest.approx(2.6403e-5, rel=1e-4)
    assert np.prod(1 - base_betas(1000, 0.999)) == pytest.approx(2.43e-9, rel=1e-2)


def test_respacing_100_timesteps_and_betas():
    sched = DiffusionSchedule.create(1000, "100", 0.2)
    assert sched.timesteps[:11] == (0, 10, 20, 30, 40, 50, 61, 71, 81, 91, 101)
    assert sched.timesteps[-3:] == (979, 989, 999) and len(sched.timesteps) == 100
    assert sched.betas[0] == pytest.approx(4.1284e-5, rel=1e-4)
    assert sched.betas[1] == pytest.approx(6.7984e-4, rel=1e-4)
    assert sched.betas[97:] == pytest.approx([0.55538, 0.74994, 0.89128], rel=1e-4)
    assert np.prod(1 - sched.betas) == pytest.approx(2.6403e-5, rel=1e-4)
    # at k = 0 the posterior mean is x̂0 itself
    assert sched.posterior_mean_coef1[0] == pytest.approx(1.0) and sched.posterior_mean_coef2[0] == pytest.approx(0)
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]


def test_respacing_small_and_sections():
    assert space_timesteps(1000, "4") == [0, 333, 666, 999]
    assert space_timesteps(1000, "1") == [0]
    assert space_timesteps(10, "2,2") == [0, 4, 5, 9]


@pytest.mark.parametrize(
    ("length", "steps", "expected"),
    [(16, 4, [2, 3, 5, 6]), (64, 4, [5, 14, 21, 24])],
)
def test_unmask_counts_tiny(length, steps, expected):
    assert unmask_counts(length, steps) == expected


def test_unmask_counts_4096():
    c32 = unmask_counts(4096, 32)
    assert c32[:6] == [5, 15, 25, 34, 44, 54] and c32[-4:] == [198, 200, 201, 200] and sum(c32) == 4096
    assert np.cumsum([0] + c32)[:5].tolist() == [0, 5, 20, 45, 79]
    c64 = unmask_counts(4096, 64)
    assert c64[:6] == [2, 3, 7, 8, 11, 14] and c64[-4:] == [100, 101, 100, 100] and sum(c64) == 4096


def test_reverse_loop_with_perfect_eps_recovers_x0():
    # Given a "network" that predicts the true noise for a fixed x0, the loop ends at x0 whatever the noise.
    sched = DiffusionSchedule.create(1000, "4", 0.2)
    x0 = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    acp = torch.tensor(np.cumprod(1 - sched.betas), dtype=torch.float32)

    def denoise(x, k):
        eps = (x - acp[k].sqrt() * x0) / (1 - acp[k]).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    x = torch.randn(5, 16)
    noise = torch.randn(3, 5, 16)
    out = p_sample_loop(sched, denoise, x, noise, torch.ones(5, 1))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_head_graph_buckets_bound_padding():
    from model.engine.head_graph import bucket

    assert [bucket(n) for n in (1, 64, 65, 300, 512, 513, 2496)] == [64, 64, 128, 512, 512, 1024, 2560]
    assert all(n <= bucket(n) < n + 512 or bucket(n) <= 2 * n for n in range(1, 5000))
