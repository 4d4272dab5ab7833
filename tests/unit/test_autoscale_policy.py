"""The scaling rule against managed Flink's documented autoscaling (connectors/autoscale_policy.py):
up after 15 one-minute datapoints >= 75 % (doubling), down after 360 < 10 % (halving, rounded up),
never below the configured parallelism, never above the maximum."""

from __future__ import annotations

import pytest

from connectors.autoscale_policy import KDA, Sample, ScalingRule, datapoints, decide

MINUTE = 60.0


def minutes(*levels: tuple[int, float], every_s: float = 20.0) -> list[Sample]:
    """Samples every `every_s` seconds: (minutes, cpu) spans in order, ending at t = total minutes."""
    samples, start = [], 0.0
    for count, cpu in levels:
        end = start + count * MINUTE
        t = start + every_s
        while t <= end + 1e-9:
            samples.append(Sample(t, cpu))
            t += every_s
        start = end
    return samples


def total(*levels: tuple[int, float]) -> float:
    return sum(count for count, _ in levels) * MINUTE


# (what KDA does, CPU history as (minutes, level) spans, current, minimum, maximum, expected count)
TABLE = [
    ("15 minutes at 75 % exactly: up, doubled", [(15, 0.75)], 2, 2, 8, 4),
    ("15 minutes at 90 %: up", [(20, 0.30), (15, 0.90)], 1, 1, 8, 2),
    ("14 minutes at 90 %: not yet", [(20, 0.30), (14, 0.90)], 2, 2, 8, 2),
    ("one quiet minute inside the 15 breaks the run", [(7, 0.9), (1, 0.5), (7, 0.9)], 2, 2, 8, 2),
    ("74.9 % is below the threshold", [(30, 0.749)], 2, 2, 8, 2),
    ("doubling is capped at the maximum", [(15, 0.95)], 2, 2, 3, 3),
    ("at the maximum already: stays", [(60, 0.99)], 3, 2, 3, 3),
    ("6 hours under 10 %: down, halved", [(360, 0.05)], 4, 1, 8, 2),
    ("halving rounds up: 3 -> 2", [(360, 0.05)], 3, 2, 3, 2),
    ("halving rounds up: 5 -> 3", [(360, 0.02)], 5, 1, 8, 3),
    ("never below the configured parallelism", [(360, 0.01)], 4, 3, 8, 3),
    ("at the minimum already: stays", [(400, 0.0)], 2, 2, 8, 2),
    ("359 quiet minutes: not yet", [(10, 0.5), (359, 0.05)], 4, 1, 8, 4),
    ("10 % exactly is not under 10 %", [(360, 0.10)], 4, 1, 8, 4),
    ("one busy minute in the 6 hours keeps it", [(200, 0.05), (1, 0.5), (159, 0.05)], 4, 1, 8, 4),
    ("between the thresholds: steady", [(400, 0.40)], 4, 1, 8, 4),
    ("below the minimum (a new minimum): raised to it", [(5, 0.5)], 1, 2, 8, 2),
    ("above the maximum (a new maximum): lowered to it", [(5, 0.5)], 6, 1, 4, 4),
]


@pytest.mark.parametrize(
    ("what", "history", "current", "minimum", "maximum", "expected"), TABLE, ids=[t[0] for t in TABLE]
)
def test_kda_rule(what: str, history, current: int, minimum: int, maximum: int, expected: int) -> None:
    decision = decide(minutes(*history), total(*history), current, minimum, maximum, KDA)
    assert decision.count == expected, decision.reason


def test_a_datapoint_is_the_maximum_of_its_minute() -> None:
    """KDA takes containerCPUUtilization's Maximum per minute: one spike per minute is enough."""
    spikes = [Sample(m * MINUTE + 30, 0.8) for m in range(15)] + [Sample(m * MINUTE + 45, 0.1) for m in range(15)]
    assert decide(spikes, 15 * MINUTE, 2, 1, 8, KDA).count == 4


def test_missing_minutes_break_the_run() -> None:
    """No sample in a minute (a process restarting, a scrape failing) is not evidence of load."""
    gap = [s for s in minutes((15, 0.9)) if not 5 * MINUTE < s.at <= 6 * MINUTE]
    assert decide(gap, 15 * MINUTE, 2, 1, 8, KDA).count == 2


def test_periods_count_back_from_now() -> None:
    samples = [Sample(10, 0.2), Sample(59, 0.5), Sample(60, 0.4), Sample(61, 0.9), Sample(200, 1.0)]
    # now = 120: period 0 is (60, 120], period 1 is (0, 60]; the sample after `now` is ignored.
    assert datapoints(samples, 120, 60, 3) == [0.9, 0.5, None]


def test_shortened_windows_follow_the_same_rule() -> None:
    """The local supervisor's rule: 1-second periods, 4 up, 6 down."""
    rule = ScalingRule(period_s=1, up_periods=4, down_periods=6)
    busy = [Sample(t / 4, 0.9) for t in range(1, 17)]  # 4 s
    assert decide(busy, 4.0, 2, 2, 3, rule).count == 3
    assert decide(busy[4:], 4.0, 2, 2, 3, rule).count == 2  # only 3 s of it
    quiet = [Sample(t / 4, 0.02) for t in range(1, 25)]  # 6 s
    assert decide(quiet, 6.0, 3, 2, 3, rule).count == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"period_s": 0},
        {"up_periods": 0},
        {"down_threshold": 0.8},
    ],
)
def test_a_rule_that_cannot_work_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="scaling rule"):
        ScalingRule(**bad)


def test_impossible_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        decide([], 0, 2, 3, 2, KDA)
