"""The operator's day: a backfill of a time range into its own prefix, and upgrades that
change settings under an existing recovery store."""

from __future__ import annotations

import re
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import read_s3_rows
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows
from tests.support.runs import impressions_env

HOUR_MS = 3_600_000
FLOW = FLOWS["movie-impressions"]


def kafka_time_cut() -> int:
    """A Kafka timestamp every record produced before is below and every one produced after is at or above."""
    cut = int(time.time() * 1000) + 1
    while time.time() * 1000 < cut + 1:
        time.sleep(0.001)
    return cut


def test_backfill_of_a_time_range_into_its_own_prefix(kafka, s3, tmp_path: Path) -> None:
    """The README's recipe: START_POSITION and STOP_AT bound the range, a new store and S3_PREFIX hold it."""
    env = impressions_env(kafka, s3, "bf")
    before = list(generate(TrafficShape(count=1_000, movies=4, users=10, step_ms=1_000, seed=21)))
    wanted = list(
        generate(TrafficShape(count=2_000, movies=4, users=10, start_ms=1_546_844_400_000 + 2 * HOUR_MS, seed=22))
    )
    after = list(
        generate(TrafficShape(count=1_000, movies=4, users=10, start_ms=1_546_844_400_000 + 5 * HOUR_MS, seed=23))
    )
    produce(iter(before), kafka.bootstrap, env["IMPRESSIONS_TOPIC"])
    start = kafka_time_cut()
    produce(iter(wanted), kafka.bootstrap, env["IMPRESSIONS_TOPIC"])
    stop = kafka_time_cut()
    produce(iter(after), kafka.bootstrap, env["IMPRESSIONS_TOPIC"])

    backfill = {**env, "S3_PREFIX": "backfill-1", "START_POSITION": f"timestamp:{start}", "STOP_AT": str(stop)}
    result = run_dataflow(FLOW, backfill, recovery=init_recovery(tmp_path / "backfill-store"))
    assert result.returncode == 0, result.stderr[-3000:]

    rows = read_s3_rows(s3, env["S3_BUCKET"], "backfill-1").drop("object").sort(pl.all())
    assert_frame_equal(rows, expected_rows(wanted).sort(pl.all()))
    [summary] = [line for line in result.stderr.splitlines() if "run summary:" in line]
    valid = sum(e.kind == "valid" for e in wanted)
    assert f"{len(wanted):,} events in ({valid:,} valid" in summary
    assert re.search(rf"{rows.height:,} rows in \d+ objects", summary)


def test_stop_at_needs_a_bounded_run(kafka, s3) -> None:
    result = run_dataflow(FLOW, {**impressions_env(kafka, s3, "bf"), "BOUNDED": "false", "STOP_AT": "1795586400000"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "movie_impressions: STOP_AT only ends bounded runs: set BOUNDED=true, or unset STOP_AT"
    )


def test_an_incompatible_change_under_a_store_stops_in_one_line_a_compatible_one_runs(
    kafka, s3, tmp_path: Path
) -> None:
    env = impressions_env(kafka, s3, "bf")
    first = list(generate(TrafficShape(count=1_500, movies=4, users=10, step_ms=1_000, seed=31)))
    produce(iter(first), kafka.bootstrap, env["IMPRESSIONS_TOPIC"])
    store = init_recovery(tmp_path / "store")
    assert run_dataflow(FLOW, env, recovery=store).returncode == 0

    changed = run_dataflow(FLOW, {**env, "WINDOW_MINUTES": "30", "SINK_PARTITIONS": "8"}, recovery=store)
    assert changed.returncode != 0
    line = changed.stderr.strip().splitlines()[-1]
    assert line.startswith("movie_impressions: settings that shape the stored state changed")
    assert "SINK_PARTITIONS '4' -> '8'" in line and "WINDOW_MINUTES '15' -> '30'" in line and "S3_PREFIX" in line

    second = list(
        generate(TrafficShape(count=1_500, movies=4, users=10, start_ms=1_546_844_400_000 + 2 * HOUR_MS, seed=32))
    )
    produce(iter(second), kafka.bootstrap, env["IMPRESSIONS_TOPIC"])
    compatible = {**env, "MAX_OUT_OF_ORDERNESS_SECONDS": "5", "KAFKA_BATCH_SIZE": "700", "S3_RETRY_SECONDS": "60"}
    resumed = run_dataflow(FLOW, compatible, recovery=store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_s3_rows(s3, env["S3_BUCKET"], "impressions").drop("object").sort(pl.all())
    assert_frame_equal(rows, expected_rows(first + second).sort(pl.all()))
