"""When to change a job's process count: managed Flink's (KDA's) autoscaling rule, as a pure function.

AWS documents the rule (Managed Service for Apache Flink developer guide, "Use automatic
scaling", how-scaling-auto):
- the metric is `containerCPUUtilization` (CPU of the whole application cluster), taken as
  its Maximum per 1-minute period;
- scale **up** when 15 consecutive 1-minute datapoints are >= 75 %: `CurrentParallelism`
  is **doubled**, up to the maximum parallelism;
- scale **down** when 360 consecutive 1-minute datapoints (6 hours) are < 10 %: the
  parallelism is **halved, rounded up**;
- never below the configured `Parallelism` (here: the minimum process count).

What this module implements is exactly that, with the periods, counts and thresholds as
parameters (the local supervisor runs it with seconds instead of minutes):
- a sample is the cluster's CPU utilisation at an instant (CPU seconds used by all
  processes per second, over the CPUs they are given: 1.0 = every process busy);
- a datapoint is the maximum of the samples in one period; periods end at `now` and
  are counted back from it; a period without samples breaks the run (missing data is
  not evidence of load, nor of quiet);
- only samples since the last change of the count are given (the caller's job: after
  a rescale KDA starts a new series too, since the new cluster has new containers);
- a count outside [minimum, maximum] is brought back inside first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    at: float  # seconds (any clock, the same as `now`)
    cpu: float  # cluster CPU utilisation, 0.0 .. 1.0 (may exceed 1.0 briefly)


@dataclass(frozen=True)
class ScalingRule:
    period_s: float = 60.0
    up_threshold: float = 0.75  # a datapoint >= this counts toward scaling up
    up_periods: int = 15
    down_threshold: float = 0.10  # a datapoint < this counts toward scaling down
    down_periods: int = 360

    def __post_init__(self) -> None:
        if self.period_s <= 0 or self.up_periods < 1 or self.down_periods < 1:
            msg = f"scaling rule {self}: the period must be > 0 and the period counts >= 1"
            raise ValueError(msg)
        if not 0 <= self.down_threshold < self.up_threshold:
            msg = f"scaling rule {self}: the down threshold must be below the up threshold"
            raise ValueError(msg)


KDA = ScalingRule()


@dataclass(frozen=True)
class Decision:
    count: int
    reason: str


def datapoints(samples: Iterable[Sample], now: float, period_s: float, periods: int) -> list[float | None]:
    """The maximum sample of each of the `periods` periods ending at `now`, newest first
    (None: no sample in that period). Period k holds samples with now - (k+1)p < at <= now - kp."""
    points: list[float | None] = [None] * periods
    for sample in samples:
        age = now - sample.at
        if age < 0:
            continue  # from the future of `now`: not part of this evaluation
        k = math.floor(age / period_s)
        if k < periods:
            current = points[k]
            points[k] = sample.cpu if current is None else max(current, sample.cpu)
    return points


def decide(
    samples: Iterable[Sample], now: float, current: int, minimum: int, maximum: int, rule: ScalingRule
) -> Decision:
    """The process count to run next, and why."""
    if not 1 <= minimum <= maximum:
        msg = f"process counts: minimum {minimum}, maximum {maximum}: need 1 <= minimum <= maximum"
        raise ValueError(msg)
    if current < minimum:
        return Decision(minimum, f"{current} is below the minimum {minimum}")
    if current > maximum:
        return Decision(maximum, f"{current} is above the maximum {maximum}")
    samples = list(samples)
    up = datapoints(samples, now, rule.period_s, rule.up_periods)
    if all(p is not None and p >= rule.up_threshold for p in up):
        wanted = min(current * 2, maximum)
        if wanted != current:
            return Decision(
                wanted, f"CPU >= {rule.up_threshold:.0%} for {rule.up_periods} periods: doubling (at most the maximum)"
            )
    down = datapoints(samples, now, rule.period_s, rule.down_periods)
    if all(p is not None and p < rule.down_threshold for p in down):
        wanted = max(math.ceil(current / 2), minimum)
        if wanted != current:
            return Decision(wanted, f"CPU < {rule.down_threshold:.0%} for {rule.down_periods} periods: halving")
    return Decision(current, "steady")
