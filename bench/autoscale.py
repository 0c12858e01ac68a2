"""GPU autoscaling on paper: an arrival trace replayed through the KEDA ScaledObject's formula, per cooldown.

    python -m bench.autoscale [--trace arrivals.txt] [--group unipic-worker-l] [--cooldowns 600,60]
                              [--startup-s 120] [--batch-s 23.0] [--batch 8] [--single-s 4.3]

No cluster is started: this is a discrete-time model (one tick a second) of what KEDA and the HPA it drives do
with deploy/k8s/overlays/keda/scaledobjects.yaml (thresholds, activation, polling interval, min/max replicas,
the scale-down stabilization window and policy are read from the file; the cooldown is varied), fed by:

- the arrival trace: `--trace`, a file of arrival times in seconds (one a line; a recorded trace), or by default
  a synthetic one (seeded): an interactive stream (one job every 40 s on average) for two hours with a quiet
  hour in the middle, and a bulk batch of 1,500 items at minute 20;
- the measured per-worker throughput of README "Benchmarks" (H100, 1024 px, 32 MAR steps): a batch of 8 in
  23.0 s, one image alone in 4.3 s, in between linearly;
- a pod start-up time (`--startup-s`, scheduling, image pull and model load: not measured here, an assumption).

What the model follows: every `pollingInterval` KEDA reads the jobs queued or running and the oldest queued
age (the queries' values); above `activationThreshold` it wakes the group (0 -> 1), and the
HPA asks ceil(value / threshold) per trigger, the largest wins, within [1, max]; scale-up at once (HPA default:
at most double or +4 pods per 15 s), scale-down only to the highest recommendation of the stabilization window
and at the policy's pace, idle pods first (a busy pod finishes its batch: graceful drain). KEDA takes the group
back to zero after `cooldownPeriod` with both metrics at or below activation. A GPU counts from pod creation to
its exit. Prints, per cooldown: time to first worker, the queue over time, queue-wait p50/p99 and GPU-minutes.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCALED_OBJECTS = ROOT / "deploy" / "k8s" / "overlays" / "keda" / "scaledobjects.yaml"


@dataclass(frozen=True)
class Policy:
    """What the ScaledObject says (one group)."""

    min_replicas: int
    max_replicas: int
    polling_s: int
    cooldown_s: int
    jobs_threshold: float
    age_threshold: float
    activation: float
    stabilization_s: int
    down_pods: int
    down_period_s: int

    @classmethod
    def from_file(cls, group: str, path: Path = SCALED_OBJECTS) -> Policy:
        so = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["metadata"]["name"] == group)
        spec = so["spec"]
        triggers = {t["name"]: t["metadata"] for t in spec["triggers"]}
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        policy = down["policies"][0]
        return cls(spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"], spec["cooldownPeriod"],
                   float(triggers["jobs"]["threshold"]), float(triggers["oldest-queued-age"]["threshold"]),
                   float(triggers["jobs"]["activationThreshold"]), down["stabilizationWindowSeconds"],
                   policy["value"], policy["periodSeconds"])


@dataclass(frozen=True)
class Throughput:
    """Measured: seconds for a batch of n (README "Benchmarks", H100, 1024 px, 32 steps)."""

    batch: int = 8
    batch_s: float = 23.0
    single_s: float = 4.3

    def seconds(self, n: int) -> float:
        return self.single_s + (n - 1) * (self.batch_s - self.single_s) / max(1, self.batch - 1)


@dataclass
class Pod:
    created: float
    ready_at: float
    busy_until: float = 0.0
    running: int = 0
    stopping: bool = False
    stopped: float | None = None


@dataclass
class Result:
    cooldown_s: int
    first_worker_s: float | None
    waits: list[float]
    timeline: list[tuple[int, int, float, int]]  # (minute, queued, oldest age s, pods)
    gpu_minutes: float
    finished: int
    left: int = 0
    notes: list[str] = field(default_factory=list)


def synthetic_trace(seed: int = 7) -> list[float]:
    """Two hours: an interactive stream (mean gap 40 s) with a quiet hour in the middle, and 1,500 items at 20 min."""
    rng = random.Random(seed)
    arrivals = []
    t = 0.0
    while t < 7200:
        t += rng.expovariate(1 / 40)
        if not 2400 <= t < 6000:
            arrivals.append(t)
    arrivals += [1200.0 + i * 0.01 for i in range(1500)]  # a batch submission lands within seconds
    return sorted(arrivals)


def simulate(arrivals: list[float], policy: Policy, speed: Throughput, startup_s: float, horizon_s: float) -> Result:
    queue: deque[float] = deque()
    pending = deque(sorted(arrivals))
    pods: list[Pod] = []
    waits: list[float] = []
    recommendations: deque[tuple[float, int]] = deque()
    last_active = -math.inf
    last_down = -math.inf
    first_worker: float | None = None
    timeline: list[tuple[int, int, float, int]] = []
    horizon = max(horizon_s, (arrivals[-1] if arrivals else 0) + 3600)
    t = 0.0
    while t <= horizon:
        while pending and pending[0] <= t:
            queue.append(pending.popleft())
        live = [p for p in pods if p.stopped is None]
        for pod in live:
            if pod.stopping and pod.busy_until <= t:
                pod.stopped = t
            elif not pod.stopping and pod.ready_at <= t and pod.busy_until <= t and queue:
                if first_worker is None:
                    first_worker = t - arrivals[0]
                n = min(speed.batch, len(queue))
                for _ in range(n):
                    waits.append(t - queue.popleft())
                pod.busy_until = t + speed.seconds(n)
                pod.running = n
        if int(t) % policy.polling_s == 0:
            jobs = len(queue) + sum(p.running for p in pods if p.stopped is None and p.busy_until > t)
            age = (t - queue[0]) if queue else 0.0
            _poll(t, jobs, age, pods, policy, recommendations, startup_s)
            if jobs > policy.activation or age > policy.activation:
                last_active = t
            running = [p for p in pods if p.stopped is None and not p.stopping]
            if running and t - last_active >= policy.cooldown_s and policy.min_replicas == 0:
                for pod in running:  # KEDA: back to zero
                    pod.stopping = True
            elif running and t - last_down >= policy.down_period_s:
                target = max(n for _, n in recommendations) if recommendations else len(running)
                excess = min(len(running) - max(1, target), policy.down_pods)
                if excess > 0:
                    idle_first = sorted(running, key=lambda p: p.busy_until)
                    for pod in idle_first[:excess]:
                        pod.stopping = True
                    last_down = t
        if int(t) % 300 == 0:
            timeline.append((int(t // 60), len(queue), (t - queue[0]) if queue else 0.0,
                             sum(1 for p in pods if p.stopped is None)))
        if not pending and not queue and all(p.stopped is not None for p in pods) and t > arrivals[-1]:
            break
        t += 1.0
    timeline.append((int(t // 60), len(queue), (t - queue[0]) if queue else 0.0,
                     sum(1 for p in pods if p.stopped is None)))
    gpu_s = sum((p.stopped if p.stopped is not None else t) - p.created for p in pods)
    return Result(policy.cooldown_s, first_worker, waits, timeline, gpu_s / 60, len(waits), len(queue))


def _poll(t: float, jobs: int, age: float, pods: list[Pod], policy: Policy,
          recommendations: deque[tuple[float, int]], startup_s: float) -> None:
    """One KEDA poll (`jobs` queued or running, the oldest queued `age`): wake from zero, and the HPA's
    scale-up (scale-down is paced by the caller)."""
    desired = max(math.ceil(jobs / policy.jobs_threshold), math.ceil(age / policy.age_threshold))
    desired = min(policy.max_replicas, max(1, desired))
    recommendations.append((t, desired))
    while recommendations and recommendations[0][0] < t - policy.stabilization_s:
        recommendations.popleft()
    running = [p for p in pods if p.stopped is None and not p.stopping]
    active = jobs > policy.activation or age > policy.activation
    if not running and not active:
        return
    if desired > len(running):
        add = min(desired - len(running), max(len(running), 4))  # HPA default scale-up policy per period
        for _ in range(max(add, 1 if not running else 0)):
            pods.append(Pod(created=t, ready_at=t + startup_s))


def report(results: list[Result], arrivals: list[float], policy: Policy) -> None:
    print(f"{len(arrivals)} arrivals over {arrivals[-1] / 60:.0f} min; group max {policy.max_replicas} workers, "
          f"thresholds {policy.jobs_threshold:g} jobs / {policy.age_threshold:g} s oldest, "
          f"polling {policy.polling_s} s")
    for r in results:
        p50 = statistics.median(r.waits) if r.waits else 0.0
        p99 = sorted(r.waits)[int(0.99 * (len(r.waits) - 1))] if r.waits else 0.0
        first = "never" if r.first_worker_s is None else f"{r.first_worker_s:.0f} s"
        print(f"\ncooldown {r.cooldown_s} s: first worker after {first}; queue wait p50 {p50:.0f} s, "
              f"p99 {p99:.0f} s; {r.gpu_minutes:.0f} GPU-minutes; {r.finished} done, {r.left} left")
        print("  minute  queued  oldest(s)  pods")
        for minute, queued, age, n in r.timeline:
            print(f"  {minute:6d}  {queued:6d}  {age:9.0f}  {n:4d}")


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trace", type=Path, help="arrival times in seconds, one a line (default: synthetic)")
    parser.add_argument("--group", default="unipic-worker-l")
    parser.add_argument("--cooldowns", default="", help="comma-separated seconds (default: the file's and 60)")
    parser.add_argument("--startup-s", type=float, default=120.0, help="pod creation to serving (assumed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-s", type=float, default=23.0)
    parser.add_argument("--single-s", type=float, default=4.3)
    args = parser.parse_args(argv)
    arrivals = (sorted(float(x) for x in args.trace.read_text().split()) if args.trace else synthetic_trace())
    base = Policy.from_file(args.group)
    cooldowns = [int(c) for c in args.cooldowns.split(",") if c] or [base.cooldown_s, 60]
    speed = Throughput(args.batch, args.batch_s, args.single_s)
    results = []
    for cooldown in cooldowns:
        policy = Policy(**{**base.__dict__, "cooldown_s": cooldown})
        results.append(simulate(arrivals, policy, speed, args.startup_s, arrivals[-1]))
    report(results, arrivals, base)
    return results


if __name__ == "__main__":
    main()
