"""docs/performance.md's results come from `make bench`'s JSON (bench/report.py), not from a hand-kept log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import BEGIN, END, ReportError, main, render, replace_results

ROOT = Path(__file__).resolve().parents[2]

# The shape bench/__main__.py writes (a complete run, figures rounded to keep the expectations readable).
SAMPLE = {
    "machine": "x86_64, 2 cores, Python 3.11.9",
    "date": "2026-12-05",
    "runs": 3,
    "workloads": {
        "high": {
            "raw_consume_defaults": {"events_per_s": 280_000.0},
            "raw_consume": {
                "events_per_s": 1_600_000.0,
                "fetch_settings": "1 MB fetches, 1 M / 1 GB queue, 10,000 per call, a consumer per partition",
                "sweep": {
                    "defaults, 10,000 per call, one consumer": 280_000.0,
                    "1 MB fetches, 1 M / 1 GB queue, 10,000 per call, a consumer per partition": 1_600_000.0,
                },
            },
            "polars": {"events_per_s": 2_400_000.0},
            "textbook_bytewax": {
                "seconds": 8.0,
                "events_per_s": 2_500.0,
                "peak_mb": 246.4,
                "cpu_seconds": 7.95,
                "impressions_out": 20_000,
            },
            "ours_1_worker": {
                "seconds": 6.25,
                "events_per_s": 320_000.0,
                "peak_mb": 618.2,
                "cpu_seconds": 7.25,
                "impressions_out": 2_000_000,
            },
            "ours_1_worker_0.1%_invalid": {
                "seconds": 7.0,
                "events_per_s": 280_000.0,
                "peak_mb": 632.0,
                "cpu_seconds": 7.7,
                "impressions_out": 1_998_000,
            },
            "ours_1_worker_steady": {"events_per_s": 400_000.0, "from": "bench-high-2h-1000000 (3.8 s) and x (6.2 s)"},
            "ours_2_workers": {"seconds": 6.0, "events_per_s": 333_333.3, "peak_mb": 640.0, "cpu_seconds": 8.0},
            "ours_2_processes": {"seconds": 5.0, "events_per_s": 400_000.0, "peak_mb": 835.0, "cpu_seconds": 9.0},
        },
        "seed": {
            "raw_consume_defaults": {"events_per_s": 180_000.0},
            "raw_consume": {"events_per_s": 2_000_000.0, "fetch_settings": "defaults", "sweep": {}},
            "ours_1_worker": {"seconds": 2.5, "events_per_s": 400_000.0, "peak_mb": 515.0, "cpu_seconds": 2.75},
            "ours_1_worker_steady": {"events_per_s": None, "from": "a and b"},
        },
    },
    "kinesis": {
        "raw_get_records": {"events_per_s": 12_500.0, "records": 20_000},
        "ours_1_worker": {"seconds": 4.0, "events_per_s": 5_000.0, "peak_mb": 400.0, "cpu_seconds": 3.0},
    },
    "latency": {"objects": 20, "median_s": 3.84, "max_s": 5.06, "bound_s": 2, "snapshot_s": 2, "budget_s": 9},
    "bookings": {
        "input_messages": 200_100,
        "exactly_once_outputs": {"seconds": 10.0, "events_per_s": 20_010.0, "cpu_seconds": 9.0, "peak_mb": 300.0},
        "flush_per_batch_outputs": {"seconds": 20.0, "events_per_s": 10_005.0, "cpu_seconds": 12.0, "peak_mb": 290.0},
    },
    "object_sink_resume": {
        "seconds": 1.234,
        "floor_seconds": 0.05,
        "fenced_units": 1280,
        "writes": 64,
        "objects": 1280,
    },
}


def test_a_complete_run_renders_every_table_with_ratios_against_its_ceiling() -> None:
    out = render(SAMPLE).splitlines()
    assert out[0] == "Measured 2026-12-05 on x86_64, 2 cores, Python 3.11.9; medians of 3 runs."
    high = out[out.index("### Workload `high`") :]
    # Ratios: 320,000 / 1,600,000 = 0.20; 2,500 / 1,600,000 = 0.0016 -> 0.00; 333,333 / 1,600,000 = 0.21.
    assert high[4:15] == [
        "| configuration | events/s | x ceiling | job CPU s | peak MB |",
        "|---|---:|---:|---:|---:|",
        "| raw consume, librdkafka's defaults, one consumer | 280,000 | 0.17 |  |  |",
        "| **raw consume, best of the sweep: the ceiling** | 1,600,000 | 1.00 |  |  |",
        "| polars NDJSON decode + group-by in memory | 2,400,000 | 1.50 |  |  |",
        "| textbook bytewax (fold_window per movieId:userId, stock clock; a prefix-sized topic) | 2,500 | 0.00 | 8.0 | 246 |",
        "| **ours, 1 worker** (defaults: the native reader where built) | 320,000 | 0.20 | 7.2 | 618 |",
        "| ours, 1 worker, one record in 1,000 invalid | 280,000 | 0.17 | 7.7 | 632 |",
        "| ours, 1 worker, steady state | 400,000 | 0.25 |  |  |",
        "| ours, 2 workers (1 process) | 333,333 | 0.21 | 8.0 | 640 |",
        "| ours, 2 processes | 400,000 | 0.25 | 9.0 | 835 |",
    ]
    assert (
        "Ceiling: raw consume with 1 MB fetches, 1 M / 1 GB queue, 10,000 per call, a consumer per partition." in high
    )
    assert "Ours, 1 worker: 128 x the textbook design." in high  # 320,000 / 2,500
    assert "| defaults, 10,000 per call, one consumer | 280,000 |" in high
    seed = out[out.index("### Workload `seed`") :]
    assert "| ours, 1 worker, steady state | not measurable |  |  |  |" in seed  # the larger run was not slower
    assert "| plain GetRecords loop: the ceiling | 12,500 | 1.00 |  |  |" in out
    assert "| ours, 1 worker | 5,000 | 0.40 | 3.0 | 400 |" in out  # 5,000 / 12,500
    assert "| 20 | 3.8 | 5.1 | 9 |" in out
    assert "### Booking correlation (200,100 input records, 1 worker)" in out
    assert "| exactly-once outputs (this checkout) | 20,010 | 9.0 | 300 |" in out
    assert "| 64 | 1,280 | 1.23 | 1,280 | 0.05 |" in out


def test_a_run_cut_short_renders_the_workloads_it_finished_and_nothing_else() -> None:
    partial = {key: SAMPLE[key] for key in ("machine", "date", "runs")} | {
        "workloads": {"high": SAMPLE["workloads"]["high"]}
    }
    text = render(partial)
    assert "### Workload `high`" in text
    assert not any(title in text for title in ("seed", "Kinesis", "Latency", "Booking", "resume"))


def test_results_of_another_shape_fail_with_one_line_naming_the_fix() -> None:
    with pytest.raises(ReportError, match=r"the results lack 'date': render a bench-results.json written by `make"):
        render({"machine": "m", "runs": 3})


def test_only_the_part_between_the_markers_changes_and_rendering_twice_is_stable() -> None:
    doc = f"# Performance\n\nMethod.\n\n{BEGIN}\nold figures\n{END}\n\nWhere the time goes.\n"
    once = replace_results(doc, "new table\n")
    assert once == f"# Performance\n\nMethod.\n\n{BEGIN}\nnew table\n{END}\n\nWhere the time goes.\n"
    assert replace_results(once, "new table\n") == once
    with pytest.raises(ReportError, match="has no"):
        replace_results("# Performance\n", "new table\n")


def test_the_command_writes_the_doc_and_names_a_missing_results_file(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"before\n{BEGIN}\n{END}\nafter\n")
    results = tmp_path / "bench-results.json"
    assert main(["--results", str(results), "--doc", str(doc)]) == 1
    assert (
        capsys.readouterr().err
        == f"bench.report: {results} does not exist: run `make bench` first, or pass --results\n"
    )
    results.write_text(json.dumps(SAMPLE))
    assert main(["--results", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(f"before\n{BEGIN}\nMeasured 2026-12-05") and text.endswith(f"{END}\nafter\n")


def test_the_performance_page_has_the_part_the_command_writes() -> None:
    text = (ROOT / "docs" / "performance.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)


def test_the_headline_runs_and_the_ceiling_beside_the_job_are_told() -> None:
    results = json.loads(json.dumps(SAMPLE))
    results["headline_runs"] = 5
    results["workloads"]["high"]["raw_consume"]["beside_the_job"] = 1_500_000.0
    out = render(results).splitlines()
    assert out[0] == (
        "Measured 2026-12-05 on x86_64, 2 cores, Python 3.11.9; medians of 3 runs (5 for `ours, 1 worker`)."
    )
    high = out[out.index("### Workload `high`") : out.index("### Workload `seed`")]
    assert (
        "That reader again, by turns with `ours, 1 worker` (5 runs each): 1,500,000 events/s; the ceiling is the "
        "higher of its two medians." in high
    )
    assert "| **raw consume, best of the sweep: the ceiling** | 1,600,000 | 1.00 |  |  |" in high
    seed = out[out.index("### Workload `seed`") :]
    assert not any(line.startswith("That reader again") for line in seed)


def test_what_waiting_booking_keys_cost_is_told_under_the_booking_table() -> None:
    results = json.loads(json.dumps(SAMPLE))
    results["bookings"]["waiting_keys"] = {"keys": 100_000, "epoch_s": 10, "seconds": 20.0, "cpu_share": 0.234}
    out = render(results).splitlines()
    assert (
        "Holding 100,000 bookings that wait for their counterparts, with no input (`-s 10`): 23 % of a core, "
        "what waiting keys cost by themselves (their wakes and snapshots; `bench/bookings.py: waiting_keys`)."
    ) in out
    assert not any(line.startswith("Holding") for line in render(SAMPLE).splitlines())
