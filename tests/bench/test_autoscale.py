"""bench/autoscale.py: the ScaledObject read from deploy/k8s, and the model's scaling behaviour on small traces."""

from __future__ import annotations

from pathlib import Path

from bench.autoscale import Policy, Throughput, main, simulate


def test_the_policy_is_the_scaled_objects() -> None:
    policy = Policy.from_file("unipic-worker-l")
    assert (policy.min_replicas, policy.max_replicas, policy.jobs_threshold) == (0, 8, 8.0)
    assert policy.cooldown_s == 600 and policy.activation == 0


def test_a_burst_wakes_the_group_scales_to_max_then_back_to_zero() -> None:
    policy = Policy.from_file("unipic-worker-l")
    result = simulate([100.0 + i * 0.01 for i in range(400)], policy, Throughput(), startup_s=60, horizon_s=0)
    assert result.finished == 400 and result.left == 0
    assert result.first_worker_s is not None and 60 <= result.first_worker_s <= 60 + policy.polling_s
    assert max(pods for _, _, _, pods in result.timeline) == policy.max_replicas
    assert result.timeline[-1][3] == 0  # the run ends with every GPU let go


def test_a_shorter_cooldown_spends_fewer_gpu_minutes_and_starts_cold_more(tmp_path: Path) -> None:
    trace = tmp_path / "arrivals.txt"
    trace.write_text("\n".join(str(600.0 * i) for i in range(12)))  # one job every ten minutes
    long, short = main(["--trace", str(trace), "--cooldowns", "900,60", "--startup-s", "90"])
    assert short.gpu_minutes < long.gpu_minutes
    assert sum(w >= 90 for w in short.waits) == 12  # a cold start for every job
    assert sum(w >= 90 for w in long.waits) < 12  # a worker kept warm through the cooldown serves some at once
