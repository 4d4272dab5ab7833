"""Both jobs run in this process on the in-memory transport (bytewax's run_main and cluster_main:
1 worker, 2 workers, 2 processes; the `entry_point` fixture): the engine's real operators, no
broker, no S3.

The subprocess tier (tests/e2e, tests/guarantees) keeps the real broker, S3 and crashes.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink
from polars.testing import assert_frame_equal

from connectors.recovery_store.resume import drop_abandoned_snapshots
from connectors.transports.memory import ABORT, Aborted, MemoryTransport
from dataflows import booking_correlation, movie_impressions
from dataflows.settings import BookingSettings, MovieImpressionsSettings
from producers.bookings import BookingTraffic, generate_bookings
from producers.movie_impressions import GeneratedEvent, TrafficShape, generate
from tests.support.entry_points import ONE_WORKER, TWO_WORKERS, EntryPoint
from tests.support.oracles import expected_bookings, expected_rows, raw_of

EPOCH = timedelta(milliseconds=100)


def run(flow: Dataflow, entry_point: EntryPoint, recovery: Path | None = None) -> None:
    config = None
    if recovery is not None:
        drop_abandoned_snapshots(recovery)  # what the jobs' start-up does (dataflows/skeleton.py)
        config = RecoveryConfig(str(recovery))
    entry_point(flow, epoch_interval=EPOCH, recovery_config=config)


def partitioned(values: list[tuple[bytes, bytes]], partitions: int) -> list[list[Any]]:
    """Messages into partitions by key, as a Kafka producer does (order kept within a key)."""
    parts: list[list[Any]] = [[] for _ in range(partitions)]
    for key, value in values:
        parts[zlib.crc32(key) % partitions].append(value)
    return parts


def rows_frame(written: list[tuple[str, Any]]) -> pl.DataFrame:
    frames = [object_rows.rows for _, object_rows in written]
    return pl.concat(frames).sort("movieId", "userId", "windowStart") if frames else pl.DataFrame()


def impressions_traffic(seed: int) -> list[GeneratedEvent]:
    shape = TrafficShape(
        count=4000,
        movies=8,
        users=30,
        step_ms=2000,
        jitter_ms=1500,
        invalid_fraction=0.02,
        late_fraction=0.01,
        seed=seed,
    )
    return list(generate(shape))


IMPRESSIONS = replace(MovieImpressionsSettings.from_env({}), max_out_of_orderness=timedelta(seconds=2))


def test_impressions_across_out_of_order_partitions_equal_the_oracle(entry_point: EntryPoint) -> None:
    sent = impressions_traffic(seed=entry_point.workers)
    transport = MemoryTransport({IMPRESSIONS.input_topic: partitioned([(e.key, e.value) for e in sent], 3)}, 97)
    rows: list[tuple[str, Any]] = []
    run(movie_impressions.build_flow(IMPRESSIONS, transport, TestingSink(rows)), entry_point)

    assert_frame_equal(rows_frame(rows).drop("object", strict=False), expected_rows(sent))
    dead = [json.loads(v) for _, v in transport.written[IMPRESSIONS.dead_letter_topic]]
    assert Counter(map(raw_of, dead)) == Counter(e.value for e in sent if e.kind == "invalid")
    late = [json.loads(v) for _, v in transport.written[IMPRESSIONS.late_topic]]
    assert Counter(map(raw_of, late)) == Counter(e.value for e in sent if e.kind == "late")


# Not as 2 processes: in one Python process a crash in one cluster_main panics its peer's too, so the
# crash is lost; the guarantee tests crash real processes (tests/guarantees/test_multipod_recovery.py).
@pytest.mark.parametrize("entry_point", [ONE_WORKER, TWO_WORKERS], ids=["1", "2"])
def test_impressions_resume_from_the_recovery_store_after_a_crash(tmp_path: Path, entry_point: EntryPoint) -> None:
    """A crash in every partition part-way; the rerun resumes from the store. The rows sink
    here is at-least-once (the S3 sink is the exactly-once one), so repeats must be identical."""
    sent = [e for e in impressions_traffic(seed=7) if e.kind == "valid"]
    parts = partitioned([(e.key, e.value) for e in sent], 3)
    for part in parts:
        part.insert(len(part) * 2 // 3, ABORT)
    transport = MemoryTransport({IMPRESSIONS.input_topic: parts}, 50)
    init_db_dir(tmp_path, entry_point.workers)
    rows: list[tuple[str, Any]] = []
    crashes = 0
    for _ in range(len(parts) + 1):  # each partition's ABORT crashes one run, once
        # A new flow per run, as a restarted process builds: nothing but the store carries over.
        flow = movie_impressions.build_flow(IMPRESSIONS, transport, TestingSink(rows))
        try:
            run(flow, entry_point, tmp_path)
            break
        except Exception as exc:  # bytewax wraps the partition's exception
            assert isinstance(exc.__cause__, Aborted), exc
            crashes += 1
    else:
        pytest.fail("the job never finished")

    assert crashes >= 1
    got = rows_frame(rows).drop("object", strict=False).unique()
    assert got.filter(pl.len().over("movieId", "userId", "windowStart") > 1).is_empty(), "a repeat differs"
    assert_frame_equal(got.sort("movieId", "userId", "windowStart"), expected_rows(sent))


def test_every_worker_hears_every_partitions_watermark_while_the_job_runs() -> None:
    """Windows close on the watermark before the input ends, on both workers, although
    each partition's movies (keys) sit on some workers only: the heartbeats carry every
    partition's watermark to every worker. The run crashes at the end, so nothing is
    flushed by an end of input."""
    sent = [e for e in impressions_traffic(seed=3) if e.kind == "valid"]
    parts = partitioned([(e.key, e.value) for e in sent], 4)
    for part in parts:
        part.append(ABORT)
    transport = MemoryTransport({IMPRESSIONS.input_topic: parts}, 40, pace=timedelta(milliseconds=100))
    rows: list[tuple[str, Any]] = []
    with pytest.raises(Exception) as crash:
        run(movie_impressions.build_flow(IMPRESSIONS, transport, TestingSink(rows)), TWO_WORKERS)
    assert isinstance(crash.value.__cause__, Aborted)

    # Every window that ended an hour of event time before the slowest partition's
    # last event must have closed (the idle timeout, a minute of wall time, never fires).
    slowest_last = min(max(json.loads(v)["timestamp"] for v in part if v is not ABORT) for part in parts)
    want = expected_rows(sent).filter(pl.col("windowEnd") <= slowest_last - 3_600_000)
    got = rows_frame(rows).drop("object", strict=False)
    assert want.height > 100
    assert_frame_equal(
        got.join(want.select("movieId", "windowStart").unique(), on=["movieId", "windowStart"]).sort(
            "movieId", "userId", "windowStart"
        ),
        want,
    )


BOOKINGS = replace(BookingSettings.from_env({}), timeout=timedelta(seconds=300))


def test_booking_correlation_equals_the_oracle_with_end_of_input_timeouts(entry_point: EntryPoint) -> None:
    sent = generate_bookings(BookingTraffic(count=3000, step_ms=200, invalid_fraction=0.02, seed=entry_point.workers))
    streams = {
        BOOKINGS.created_topic: partitioned([(m.key, m.value) for m in sent if m.side == "created"], 2),
        BOOKINGS.events_topic: partitioned([(m.key, m.value) for m in sent if m.side == "event"], 2),
    }
    transport = MemoryTransport(streams, 64)
    run(booking_correlation.build_flow(BOOKINGS, transport, recheck=timedelta(milliseconds=20)), entry_point)

    want_alerts, want_unmatched, want_invalid = expected_bookings(sent)
    alerts = {k.decode(): json.loads(v) for k, v in transport.written[BOOKINGS.alerts_topic]}
    assert len(alerts) == len(transport.written[BOOKINGS.alerts_topic]) and alerts == want_alerts
    unmatched = {k.decode(): json.loads(v)["seen"] for k, v in transport.written[BOOKINGS.unmatched_topic]}
    assert unmatched == want_unmatched
    dead = [json.loads(v) for _, v in transport.written[BOOKINGS.dead_letter_topic]]
    assert Counter(map(raw_of, dead)) == want_invalid


def test_an_output_record_over_its_streams_limit_becomes_an_output_refused_dead_letter(entry_point: EntryPoint) -> None:
    """The stream would refuse it: it goes to the dead letters, whole, with its size and the limit; the rest flows."""
    ts = 1_546_845_718_557
    big = {"bookingId": "big", "createdAt": ts, "customerId": "c" * 3000, "amount": 1, "currency": "EUR"}
    small = {"bookingId": "small", "createdAt": ts, "customerId": "c", "amount": 1, "currency": "EUR"}
    events = [{"bookingId": b, "timestamp": ts + 5, "eventType": "PAID"} for b in ("big", "small")]
    streams = {
        BOOKINGS.created_topic: [[json.dumps(big).encode(), json.dumps(small).encode()]],
        BOOKINGS.events_topic: [[json.dumps(e).encode() for e in events]],
    }
    transport = MemoryTransport(streams, 64, record_limit=2000)
    run(booking_correlation.build_flow(BOOKINGS, transport, recheck=timedelta(milliseconds=20)), entry_point)

    assert [k for k, _ in transport.written[BOOKINGS.alerts_topic]] == [b"small"]
    (dead,) = [json.loads(v) for _, v in transport.written[BOOKINGS.dead_letter_topic]]
    alert = json.loads(dead["raw"])
    assert (alert["bookingId"], alert["customerId"], alert["gapMs"]) == ("big", "c" * 3000, 5)
    size = len(b"big") + len(dead["raw"].encode())
    assert dead["kind"] == "output_refused" and dead["stream"] == BOOKINGS.alerts_topic
    assert (dead["size"], dead["limit"], dead["key"]) == (size, 2000, "big")
    assert dead["unit"] == f"alert:{BOOKINGS.created_topic}:0:0+{BOOKINGS.events_topic}:0:0"
