import copy
import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from dataflows import metrics
from dataflows.dead_letters import LateEvent
from dataflows.event_time import (
    COMMIT_JITTER_S,
    NO_WATERMARK,
    EventTimeClock,
    Heartbeat,
    HeartbeatSchedule,
    KeyWatermark,
    WatermarkView,
    align_down,
    is_late,
    partition_watermark,
    to_datetime,
)
from dataflows.impressions.layout import movie_shards
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import TALLY_SCHEMA, WindowSlice, WindowTallies
from tests.support.factories import batch_of, kafka_message

W = 15 * 60 * 1000


@pytest.mark.parametrize(
    ("timestamp", "watermark", "late"),
    [
        (0, W - 1, False),  # window [0, W) still open one ms before its end
        (0, W, True),  # ...closed exactly at its end
        (W - 1, W, True),  # the last ms of a window is late once the end is reached
        (W, W, False),  # the first ms of the next window is not
        (W, 2 * W - 1, False),  # older than the watermark, window still open: not late (Flink's rule)
        (5, NO_WATERMARK, False),
    ],
)
def test_late_only_when_window_ended(timestamp: int, watermark: int, late: bool) -> None:
    assert is_late(timestamp, watermark, W) is late


@pytest.mark.parametrize(("watermark", "aligned"), [(0, 0), (W - 1, 0), (W, W), (2 * W + 5, 2 * W)])
def test_align_down_to_window_boundary(watermark: int, aligned: int) -> None:
    assert align_down(watermark, W) == aligned


def test_view_uses_only_committed_observations() -> None:
    view = WatermarkView(["a"], idle_timeout_s=60, now=0)
    view.observe("a", 1000)
    assert view.watermark(now=1) == NO_WATERMARK  # same epoch: not yet
    view.commit(now=1)
    assert view.watermark(now=1) == 1000


def test_view_is_min_over_partitions_and_waits_for_silent_ones() -> None:
    view = WatermarkView(["a", "b"], idle_timeout_s=60, now=0)
    view.observe("a", 5000)
    view.commit(now=1)
    assert view.watermark(now=1) == NO_WATERMARK  # b has said nothing yet
    view.observe("b", 2000)
    view.commit(now=2)
    assert view.watermark(now=2) == 2000  # a fast partition cannot make a slow one late


def test_view_skips_idle_partitions_and_never_goes_back() -> None:
    view = WatermarkView(["a", "b"], idle_timeout_s=10, now=0)
    view.observe("a", 1000)
    view.observe("b", 9000)
    view.commit(now=0)
    assert view.watermark(now=5) == 1000
    view.observe("b", 20_000)
    view.commit(now=8)
    assert view.watermark(now=12) == 20_000  # a silent for 12 s > 10 s idle timeout
    view.observe("a", 1500)
    view.commit(now=13)
    assert view.watermark(now=13) == 20_000  # a is back, lower, but the watermark holds


def _slice(movie: str, ts: int, user: str, source_watermark: int) -> WindowSlice:
    tallies = pl.DataFrame([(movie, user, 1, ts)], schema=TALLY_SCHEMA, orient="row")
    return WindowSlice(movie, ts - ts % W, ts, [movie], tallies, "s", source_watermark)


def _fold(acc: WindowTallies, piece: WindowSlice) -> WindowTallies:
    acc.add(piece.tallies, piece.movies)
    return acc


def _clock(recheck: timedelta, arrival=None) -> EventTimeClock:
    return EventTimeClock(
        ts_getter=lambda s: to_datetime(s.latest),
        source_watermark_getter=lambda s: (s.source, s.source_watermark),
        sources=["s"],
        window=timedelta(milliseconds=W),
        idle_timeout=timedelta(hours=1),
        recheck=recheck,
        arrival_watermark_getter=arrival,
    )


def _impression_windows(slices, clock: EventTimeClock):
    """The impressions job's windowing of slices keyed by shard, through bytewax's own fold_window."""
    return win.fold_window(
        "w",
        op.key_on("key", slices, lambda s: s.shard),
        clock,
        win.TumblingWindower(timedelta(milliseconds=W), datetime(1970, 1, 1, tzinfo=UTC)),
        WindowTallies,
        _fold,
        WindowTallies.merge,
        ordered=False,
    )


def test_closed_window_never_reopens_for_a_key_whose_state_was_dropped() -> None:
    """The re-open pitfall (docs/architecture.md), through bytewax's own fold_window."""
    t0 = 1_546_844_400_000  # a window start
    items = [
        _slice("quiet", t0 + 1, "u1", NO_WATERMARK),
        _slice("busy", t0 + W + 1, "u2", t0 + W + 1),  # partition watermark passes the first window's end
        _slice("busy", t0 + W + 2, "u2", t0 + W + 2),
        _slice("busy", t0 + W + 3, "u2", t0 + W + 3),
        _slice("quiet", t0 + 2, "u3", t0 + W + 3),  # "quiet" has no open window any more
    ]
    flow = Dataflow("reopen")
    out = _impression_windows(
        op.input("in", flow, TestingSource(items, batch_size=1)), _clock(timedelta(milliseconds=10))
    )
    down: list = []
    late: list = []
    op.output("down", out.down, TestingSink(down))
    op.output("late", out.late, TestingSink(late))
    run_main(flow, epoch_interval=timedelta(0))

    first_window = t0 // W
    quiet = [(wid, acc.summed().rows()) for k, (wid, acc) in down if k == "quiet"]
    assert quiet == [(first_window, [("quiet", "u1", 1, t0 + 1)])]
    assert [(k, wid, s.tallies.rows()) for k, (wid, s) in late] == [
        ("quiet", first_window, [("quiet", "u3", 1, t0 + 2)])
    ]
    assert sum(1 for k, (wid, _) in down if k == "quiet") == 1


def test_heartbeat_keys_come_from_a_bounded_set() -> None:
    # bytewax keeps the last snapshot of every key it ever saw: fresh keys forever would grow the store forever.
    schedule = HeartbeatSchedule(interval=timedelta(0))
    first = {beat.key for _ in range(1_000) for beat in schedule.due("topic-0", 1_000)}
    later = {beat.key for _ in range(10_000) for beat in schedule.due("topic-0", 1_000)}
    assert later == first
    assert len({beat.key for beat in schedule.due("topic-0", 1_000)}) == HeartbeatSchedule.KEYS_PER_ROUND


def _partition_items(source: str, batches: list[list[int]], window_ms: int, bound_ms: int) -> list:
    """The source's output for one partition: each batch's items (real `slice_batch`), then a heartbeat per shard."""
    items, newest, offset = [], NO_WATERMARK, 0
    for batch in batches:
        messages = []
        for ms in batch:
            ts = 1_546_844_400_000 + ms
            value = json.dumps({"movieId": f"m{ms % 3}", "userId": f"u{ms % 5}", "timestamp": ts}).encode()
            messages.append(kafka_message(value, offset))
            offset += 1
        out, newest = slice_batch(
            source, batch_of(messages), newest, window_ms=window_ms, max_out_of_orderness_ms=bound_ms
        )
        assert not [i for i in out if not isinstance(i, (WindowSlice, LateEvent))]
        items += [i for i in out if isinstance(i, WindowSlice)]
        items += [Heartbeat(shard, source, partition_watermark(newest, bound_ms)) for shard in movie_shards()]
    return items


def _arrival_watermark(item: WindowSlice | Heartbeat) -> int:
    return item.source_watermark if isinstance(item, Heartbeat) else item.watermark_before


@settings(max_examples=150, deadline=None)
@given(
    partitions=st.lists(
        st.lists(st.lists(st.integers(0, 20_000), min_size=1, max_size=12), min_size=1, max_size=6),
        min_size=1,
        max_size=3,
    ),
    rng=st.randoms(use_true_random=False),
)
def test_no_on_time_slice_reaches_a_window_its_key_already_closed(partitions, rng) -> None:
    """The claim of "Per key" (dataflows/event_time.py): a key that hears each partition in log
    order, however the partitions interleave, never closes a window an on-time slice is still bound for."""
    window_ms, bound_ms = 1_000, 1_500
    streams = {
        f"{i}-t": _partition_items(f"{i}-t", batches, window_ms, bound_ms) for i, batches in enumerate(partitions)
    }
    for shard in movie_shards():
        queues = {
            source: [i for i in items if (i.key if isinstance(i, Heartbeat) else i.shard) == shard]
            for source, items in streams.items()
        }
        key = KeyWatermark(streams, _arrival_watermark)
        while any(queues.values()):
            source = rng.choice([s for s, q in queues.items() if q])  # any interleaving, each partition in order
            item = queues[source].pop(0)
            key.observe(source, item)
            if isinstance(item, WindowSlice):
                assert item.window_start + window_ms > key.value, (shard, item, key.value)


def test_a_key_closes_its_windows_when_every_partition_passed_them_not_at_the_epoch_end() -> None:
    """Through bytewax's own fold_window, with epochs far longer than the run: a window's output
    comes out while later input still flows in, not only at the end."""
    t0 = 1_546_844_400_000  # a window start
    items = [
        _slice("m", t0 + 1, "u1", NO_WATERMARK),
        *[_slice("m", t0 + W + i, "u2", t0 + W + i) for i in range(1, 40)],  # the watermark before passes W
    ]
    for item in items:
        item.watermark_before = item.source_watermark
    seen: list[int] = []
    flow = Dataflow("per_key_close")
    inputs = op.map(
        "count_in", op.input("in", flow, TestingSource(items, batch_size=1)), lambda s: (seen.append(1), s)[1]
    )
    out = _impression_windows(inputs, _clock(timedelta(hours=1), arrival=lambda s: s.watermark_before))
    closed_after: list[tuple[int, int]] = []
    op.output("down", op.map("when", out.down, lambda kv: (kv[1][0], len(seen))), TestingSink(closed_after))
    run_main(flow, epoch_interval=timedelta(hours=1))

    first_window, second_window = t0 // W, t0 // W + 1
    assert [w for w, _ in closed_after] == [first_window, second_window]
    assert closed_after[0][1] < len(items), "the first window waited for the end of the input"


def test_the_watermark_lag_is_the_slowest_workers_and_keeps_growing_while_nothing_commits(monkeypatch) -> None:
    wall_s = 1_700_000_000.0
    monkeypatch.setattr(time, "time", lambda: wall_s)
    record = metrics.record_watermark_lag("lag_test")
    sample = lambda: REGISTRY.get_sample_value("waxstreams_watermark_lag_seconds", {"job": "lag_test"})  # noqa: E731
    assert math.isnan(sample())  # no watermark yet: no lag to claim
    record(int(wall_s * 1000) - 5_000)
    other = threading.Thread(target=record, args=(int(wall_s * 1000) - 60_000,))  # a second worker, further behind
    other.start()
    other.join()
    assert sample() == 60
    wall_s += 30  # the job stalls: nothing commits
    assert sample() == 90


def test_a_waiting_key_sleeps_until_the_next_epoch_s_commit_may_come() -> None:
    view = WatermarkView(["a"], idle_timeout_s=60, now=0, epoch_s=2)
    for burst in (10.0, 10.3, 10.9):  # one epoch's keys: the first commit dates it
        view.commit(now=burst)
    assert view.unchanged_for(now=10.5) == pytest.approx(1.0)  # until 10 + 2 - COMMIT_JITTER_S
    assert view.unchanged_for(now=11.6) == 0  # it may come now: look again every recheck
    view.commit(now=3610.0)  # the next commit an hour later (no key woke meanwhile)
    assert view.unchanged_for(now=3610.1) == pytest.approx(1.4)  # one epoch, not the hour
    assert WatermarkView(["a"], idle_timeout_s=60, now=0).unchanged_for(now=5) == 0  # no interval known


@settings(max_examples=300)
@given(gaps=st.lists(st.floats(0.0, 7200.0), min_size=1, max_size=8), later=st.floats(0.0, 7200.0))
def test_a_waiting_key_never_sleeps_past_one_epoch(gaps: list[float], later: float) -> None:
    view = WatermarkView(["a"], idle_timeout_s=60, now=0, epoch_s=2)
    now = 0.0
    for gap in gaps:
        now += gap
        view.commit(now)
    assert 0 <= view.unchanged_for(now + later) <= 2 - COMMIT_JITTER_S + 1e-9


@settings(max_examples=300)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 10_000), st.floats(0.0, 4.0)), min_size=2, max_size=8
    ),
    later=st.floats(0.0, 30.0),
    probes=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
)
def test_the_watermark_holds_while_it_is_said_to(steps: list, later: float, probes: list[float]) -> None:
    # No commit comes meanwhile: partitions may only go idle, which the view must foresee.
    view = WatermarkView(["a", "b"], idle_timeout_s=5, now=0, epoch_s=3)
    now = 0.0
    for source, watermark, gap in steps:
        now += gap
        view.observe(source, watermark)
        view.commit(now)
    now += later
    expected = copy.deepcopy(view).watermark(now)
    held = view.unchanged_for(now)
    for fraction in probes:
        assert copy.deepcopy(view).watermark(now + held * fraction * 0.999) == expected
