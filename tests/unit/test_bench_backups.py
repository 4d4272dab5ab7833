"""`make bench`'s backups-on/off figures (bench/backups.py) and their table (bench/report.py)."""

from __future__ import annotations

from bench.backups import OFF, label, orders, round_figures, summarize
from bench.report import backups_section, render
from connectors.backup_layout import BACKUPS, Manifest


def manifest(name: str, seconds: float, raw: list[int], process_id: int | None = None) -> Manifest:
    files = tuple(
        {"name": f"f{i}", "key": "k", "sha256": "x", "bytes": b, "stored_bytes": b // 10} for i, b in enumerate(raw)
    )
    return Manifest(BACKUPS, name, (0,), 1, process_id, 1, 3, 0, seconds, files)


def test_each_configuration_takes_each_place_once_over_as_many_runs() -> None:
    assert orders(["off", "a", "b"], 3) == [["off", "a", "b"], ["a", "b", "off"], ["b", "off", "a"]]
    assert orders(["off", "a"], 1) == [["off", "a"]]
    for place in range(3):
        assert sorted(order[place] for order in orders(["off", "a", "b"], 3)) == ["a", "b", "off"]


def test_a_round_costs_its_slowest_copy_and_its_size_is_the_largest_rounds() -> None:
    rounds = {
        "20261207T000001Z": [manifest("r1", 0.2, [100])],
        "20261207T000003Z": [manifest("r3", 0.3, [4_000, 24]), manifest("r3", 0.9, [1_000], 1)],  # two processes
        "20261207T000002Z": [manifest("r2", 0.5, [2_000])],
        "20261207T000004Z": [manifest("r4", 0.1, [40])],  # the newest: the windows had closed
    }
    assert round_figures(rounds) == {
        "rounds": 4,
        "seconds_per_round": 0.35,  # median of 0.2, 0.5, 0.9 (round 3's slower copy) and 0.1
        "max_seconds_per_round": 0.9,
        "raw_bytes_per_round": 5_024,  # round 3, both copies
    }
    assert round_figures({}) == {
        "rounds": 0,
        "seconds_per_round": None,
        "max_seconds_per_round": None,
        "raw_bytes_per_round": None,
    }


def job(
    rate: float, cpu: float, out: int = 1_000, rounds: int | None = None, spent: float | None = None, kb: int = 2
) -> dict:
    figures = {"seconds": 100_000 / rate, "events_per_s": rate, "cpu_seconds": cpu, "impressions_out": out}
    if rounds is not None:
        figures |= {"rounds": rounds, "seconds_per_round": spent, "max_seconds_per_round": spent}
        figures |= {
            "raw_bytes_per_round": None if spent is None else kb * 4_096,
            "bytes_per_round": None if spent is None else kb * 1_024,
        }
    return figures


def test_the_throughput_ratio_is_the_median_of_each_runs_pair_not_a_ratio_of_medians() -> None:
    by_config = {
        OFF: [job(100, 10), job(200, 10), job(50, 10)],
        label(10): [job(150, 11, rounds=0), job(100, 11, rounds=1, spent=0.4), job(45, 12, rounds=1, spent=0.6)],
        label(1): [
            job(80, 12, rounds=8, spent=0.5, kb=900),
            job(160, 13, rounds=9, spent=0.5, kb=2),  # no tick landed while windows were open
            job(45, 14, rounds=10, spent=0.5, kb=500),
        ],
    }
    result = summarize("topic", 100_000, by_config)
    ten, one = result["intervals"]["10"], result["intervals"]["1"]
    assert ten["vs_off"] == 0.9  # pairs 1.5, 0.5, 0.9 (a ratio of medians would give 100 / 100)
    assert ten["cpu_vs_off"] == 1.1
    assert ten["rounds"] == 1 and ten["seconds_per_round"] == 0.5  # the runs that took a round
    assert ten["share_of_interval"] == 0.05
    assert one["vs_off"] == 0.8 and one["share_of_interval"] == 0.5 and one["rounds"] == 9
    assert one["bytes_per_round"] == 900 * 1_024 and one["raw_bytes_per_round"] == 900 * 4_096  # the largest
    assert ten["max_seconds_per_round"] == 0.6  # the slowest round of all runs
    assert result["off"]["events_per_s"] == 100 and result["runs"] == 3 and result["same_output"]
    by_config[label(1)][2] = job(45, 14, out=999, rounds=10, spent=0.5)
    assert not summarize("topic", 100_000, by_config)["same_output"]


def test_the_section_renders_off_then_each_interval_and_leaves_unmeasured_cells_empty() -> None:
    by_config = {
        OFF: [job(200_000, 10.0)],
        label(10): [job(190_000, 10.5, rounds=0)],
        label(1): [job(150_000, 12.25, rounds=9, spent=0.25)],
    }
    lines = backups_section(summarize("bench-high-2000000", 2_000_000, by_config))
    assert lines[0] == "### Recovery store backups (`bench-high-2000000`, 1 worker, medians of 1 runs)"
    table = lines[lines.index("|---|---:|---:|---:|---:|---:|---:|---:|---:|") + 1 :]
    assert table[:3] == [
        "| off | 200,000 | 1.00 | 10.0 | 1.00 |  |  |  |  |",
        "| every 10 s | 190,000 | 0.95 | 10.5 | 1.05 | 0 |  |  |  |",
        "| every 1 s | 150,000 | 0.75 | 12.2 | 1.23 | 9 | 2 (8) | 0.25 (0.25) | 25.0% |",
    ]
    assert "The output (impressions summed) was the same in every run, backups on or off." in lines
    results = {"machine": "m", "date": "d", "runs": 1, "backups": summarize("t", 1, by_config)}
    assert "### Recovery store backups (`t`, 1 worker, medians of 1 runs)" in render(results)
