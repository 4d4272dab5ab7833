"""The Kinesis stream reader over an in-memory Kinesis (tests/support/fake_kinesis.py) on a test-driven clock.

Split, merge, retention, throttling and expired iterators, each checked against what was
written: every record read exactly once, a key's records in the order written, a shard's in
sequence order, a parent's before its children's, and never more than 5 calls/s on a shard.
"""

from __future__ import annotations

import itertools
import logging
import pickle
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from connectors.transports.batch import RecordBatch
from connectors.transports.kinesis.proxy import KinesisUnavailable
from connectors.transports.kinesis.reader import KinesisSourceError, ReadOptions, StreamReader
from tests.support.fake_kinesis import FakeKinesis

STEP = 1 / 32  # the fake clock's tick: exact in binary, so call times add up without rounding
Item = tuple[str, str, str, bytes]  # (key, shard, sequence, data)


def record_step(stream: str, batch: RecordBatch, count: int) -> tuple[list[Item], int]:
    keys, offsets, values = batch.keys, batch.offsets, batch.values
    return [(keys[i].decode(), batch.partition, offsets[i], values[i]) for i in range(len(batch))], count + len(batch)


def reader(fake: FakeKinesis, stream: str, positions: Any = None, state: int = 0, **options: Any) -> StreamReader:
    opts: dict[str, Any] = {"bounded": True, "discovery_seconds": 1.0, "idle_poll_seconds": 0.5, **options}
    return StreamReader(
        ReadOptions(**opts),
        stream,
        fake,
        record_step,
        positions,
        state,
        clock=fake.clock,
        wall=fake.clock.wall,
        jitter=lambda lo, hi: hi,  # the top of the jitter range: backoff times exact
    )


def drain(part: StreamReader, fake: FakeKinesis, until: Any = None, steps: int = 20_000) -> list[Item]:
    """Call next_batch as bytewax would, the clock moving one tick between calls."""
    items: list[Item] = []
    for _ in range(steps):
        try:
            items.extend(part.next_batch())
        except StopIteration:
            return items
        if until is not None and until(items):
            return items
        fake.clock.advance(STEP)
    pytest.fail(f"the reader did not finish in {steps} ticks ({len(items)} items read)")


def writes(n: int, keys: int, tag: str) -> list[tuple[str, bytes]]:
    return [(f"k{i % keys}", f"{tag}{i}".encode()) for i in range(n)]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_read_as_written(items: list[Item], written: list[tuple[str, str, str]], fake: FakeKinesis, stream: str):
    """Every record once; per key in write order; per shard in sequence order; parents before children."""
    read = [seq for _, _, seq, _ in items]
    assert sorted(read) == sorted(seq for _, _, seq in written) and len(set(read)) == len(read)
    by_key: dict[str, list[str]] = defaultdict(list)
    for key, _, seq in written:
        by_key[key].append(seq)
    read_by_key: dict[str, list[str]] = defaultdict(list)
    read_by_shard: dict[str, list[int]] = defaultdict(list)
    for key, shard, seq, _ in items:
        read_by_key[key].append(seq)
        read_by_shard[shard].append(int(seq))
    assert read_by_key == by_key
    assert all(seqs == sorted(seqs) for seqs in read_by_shard.values())
    where = {seq: i for i, (_, _, seq, _) in enumerate(items)}
    for shard_id, seqs in read_by_shard.items():
        for parent in fake.shard(stream, shard_id).parents:
            parent_last = max((where[str(s)] for s in read_by_shard.get(parent, [])), default=-1)
            assert parent_last < where[str(seqs[0])], f"{shard_id} read before its parent {parent} was finished"


def test_every_record_once_in_order_across_a_split_and_a_merge_while_reading() -> None:
    fake = FakeKinesis()
    left, right = fake.create_stream("s", shards=2)
    written = fake.put("s", writes(60, 6, "a"))
    part = reader(fake, "s", bounded=False, max_records=7)
    items = drain(part, fake, until=lambda items: len(items) >= 20)
    low, high = fake.split("s", left)
    written += fake.put("s", writes(60, 6, "b"))
    items += drain(part, fake, until=lambda items: len(items) >= 10)
    merged = fake.merge("s", high, right)
    written += fake.put("s", writes(60, 6, "c"))
    items += drain(part, fake, until=lambda got: len(items) + len(got) >= len(written))
    later = fake.clock.now + 30
    items += drain(part, fake, until=lambda _: fake.clock.now > later)  # nothing more comes, nothing twice
    assert {shard for _, shard, _ in written} == {left, right, low, high, merged}
    assert_read_as_written(items, written, fake, "s")
    part.close()


def test_children_are_found_at_their_parents_end_without_waiting_for_discovery() -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    part = reader(fake, "s", bounded=False, discovery_seconds=600.0)
    written = fake.put("s", writes(20, 4, "a"))
    items = drain(part, fake, until=lambda items: len(items) >= 20)
    fake.split("s", shard)
    written += fake.put("s", writes(20, 4, "b"))
    started = fake.clock.now
    items += drain(part, fake, until=lambda got: len(items) + len(got) >= len(written))
    assert fake.clock.now - started < 5  # from the parent's SHARD_END, not from ListShards 10 minutes on
    assert len(fake.times("list_shards")) == 1
    assert_read_as_written(items, written, fake, "s")


def test_a_merge_child_waits_for_its_slower_parent() -> None:
    fake = FakeKinesis()
    left, right = fake.create_stream("s", shards=2)
    written = fake.put("s", writes(40, 8, "a"))
    child = fake.merge("s", left, right)
    written += fake.put("s", writes(40, 8, "b"))
    fake.fail("get_records", *["throttled"] * 5, shard=right)  # right finishes seconds after left
    items = drain(reader(fake, "s"), fake)
    assert fake.raised == ["throttled"] * 5
    assert fake.times("get_records", child)[0] > fake.times("get_records", right)[-1]
    assert_read_as_written(items, written, fake, "s")


def test_a_resume_from_a_snapshot_taken_mid_split_reads_exactly_the_rest() -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    written = fake.put("s", writes(50, 5, "a"))
    fake.split("s", shard)
    written += fake.put("s", writes(50, 5, "b"))
    first_part = reader(fake, "s", max_records=10)
    first = drain(first_part, fake, until=lambda items: len(items) >= 30)
    snapshot = pickle.loads(pickle.dumps(first_part.snapshot()))  # as bytewax stores it
    assert snapshot[1] == len(first)
    first_part.next_batch()  # read on past the snapshot: a crash loses this, the resume reads it again
    rest = drain(reader(fake, "s", *snapshot, max_records=10), fake)
    assert_read_as_written(first + rest, written, fake, "s")


def test_a_position_past_retention_restarts_the_shard_at_trim_horizon_with_one_warning(caplog) -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    written = fake.put("s", writes(20, 2, "a"))
    stale = {"shards": {shard: {"pos": ["AFTER_SEQUENCE_NUMBER", written[4][2]], "parents": []}}, "done": []}
    still_there = pickle.loads(pickle.dumps(stale))
    fake.trim("s", shard, 12)  # retention took records 0..11: the resume position among them
    before = counter("waxstreams_kinesis_position_resets_total", stream="s")
    with caplog.at_level(logging.WARNING, logger="connectors.transports.kinesis.reader"):
        items = drain(reader(fake, "s", stale), fake)
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written[12:]]  # what retention left
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TRIM_HORIZON" in warnings[0] and shard in warnings[0]
    assert counter("waxstreams_kinesis_position_resets_total", stream="s") == before + 1
    # A position retention has not reached yet resumes right after it.
    still_there["shards"][shard]["pos"][1] = written[14][2]
    assert [seq for _, _, seq, _ in drain(reader(fake, "s", still_there), fake)] == [s for _, _, s in written[15:]]
    assert counter("waxstreams_kinesis_position_resets_total", stream="s") == before + 1


def test_a_parent_gone_past_retention_is_skipped_and_its_children_are_read(caplog) -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    old = fake.put("s", writes(10, 2, "a"))
    fake.split("s", shard)
    written = fake.put("s", writes(30, 3, "b"))
    fake.drop("s", shard)  # the parent and its unread records are gone altogether
    positions = {"shards": {shard: {"pos": ["AFTER_SEQUENCE_NUMBER", old[3][2]], "parents": []}}, "done": []}
    with caplog.at_level(logging.WARNING, logger="connectors.transports.kinesis.reader"):
        part = reader(fake, "s", positions)
        items = drain(part, fake)
    assert_read_as_written(items, written, fake, "s")
    assert any("gone" in r.getMessage() and shard in r.getMessage() for r in caplog.records)
    snapshot = part.snapshot()
    assert shard not in snapshot[0]["shards"]  # counted as read: a resume does not wait for it
    assert drain(reader(fake, "s", *snapshot), fake) == []  # nor read anything twice


def test_throttling_backs_off_doubling_and_never_exceeds_5_calls_per_second() -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    written = fake.put("s", writes(40, 1, "a"))
    fake.fail("get_records", None, "throttled", "throttled", "throttled", "throttled")
    before = counter("waxstreams_kinesis_retries_total", stream="s", reason="throttled")
    items = drain(reader(fake, "s", max_records=5), fake)
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    assert counter("waxstreams_kinesis_retries_total", stream="s", reason="throttled") == before + 4
    gaps = [b - a for a, b in itertools.pairwise(fake.times("get_records", shard))]
    assert min(gaps) >= 0.2  # at most 5 GetRecords per second on a shard, failed calls included
    # After the call that was throttled: 0.2, 0.4, 0.8, 1.6 s (jitter at its top here), then back to 0.2.
    expected = [0.2, 0.4, 0.8, 1.6, 0.2]
    assert all(e <= g < e + STEP + 1e-9 for e, g in zip(expected, gaps[1:6], strict=True)), gaps


def test_throttled_or_failing_calls_on_one_shard_do_not_hold_up_another() -> None:
    fake = FakeKinesis()
    busy, calm = fake.create_stream("s", shards=2)
    written = fake.put("s", writes(60, 12, "a"))
    fake.fail("get_records", *["throttled"] * 4, shard=busy)
    fake.fail("shard_iterator", "transient", shard=calm)
    items = drain(reader(fake, "s"), fake)
    assert_read_as_written(items, written, fake, "s")
    calm_done = max(i for i, (_, shard, _, _) in enumerate(items) if shard == calm)
    busy_first = min(i for i, (_, shard, _, _) in enumerate(items) if shard == busy)
    assert calm_done < busy_first  # the calm shard was read while the busy one backed off


def test_an_expired_iterator_is_renewed_after_the_last_record_read() -> None:
    fake = FakeKinesis()
    fake.create_stream("s", shards=1)
    written = fake.put("s", writes(30, 1, "a"))
    before = counter("waxstreams_kinesis_retries_total", stream="s", reason="expired_iterator")
    part = reader(fake, "s", max_records=10)
    items = drain(part, fake, until=lambda items: len(items) >= 10)
    fake.clock.advance(301)  # the job paused longer than an iterator lives
    items += drain(part, fake)
    assert fake.raised == []  # the fake's own 5-minute expiry, not an injected failure
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]  # none lost, none twice
    renewals = [c for c in fake.calls if c.name == "shard_iterator"]
    assert [(c.kind, c.arg) for c in renewals] == [("TRIM_HORIZON", None), ("AFTER_SEQUENCE_NUMBER", written[9][2])]
    assert counter("waxstreams_kinesis_retries_total", stream="s", reason="expired_iterator") == before + 1


def test_an_iterator_expired_by_the_service_at_any_call_loses_nothing() -> None:
    fake = FakeKinesis()
    left, _ = fake.create_stream("s", shards=2)
    written = fake.put("s", writes(50, 5, "a"))
    fake.split("s", left)
    written += fake.put("s", writes(50, 5, "b"))
    fake.fail("get_records", None, "expired_iterator", None, None, "expired_iterator", "expired_iterator")
    items = drain(reader(fake, "s", max_records=8), fake)
    assert fake.raised.count("expired_iterator") == 3
    assert_read_as_written(items, written, fake, "s")
    for shard in {c.shard for c in fake.calls if c.name == "get_records"}:  # renewals too keep to 5 calls/s
        assert min(b - a for a, b in itertools.pairwise(fake.times("get_records", shard))) >= 0.2


def test_transient_failures_back_off_with_one_warning_per_streak(caplog) -> None:
    fake = FakeKinesis()
    fake.create_stream("s", shards=1)
    written = fake.put("s", writes(10, 1, "a"))
    fake.fail("get_records", "transient", "unreachable", "transient", None, "transient")
    before = counter("waxstreams_kinesis_retries_total", stream="s", reason="transient")
    with caplog.at_level(logging.WARNING, logger="connectors.transports.kinesis.reader"):
        items = drain(reader(fake, "s", max_records=5), fake)
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    assert counter("waxstreams_kinesis_retries_total", stream="s", reason="transient") == before + 4
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2  # two streaks


def test_a_failed_listing_is_retried_at_the_next_discovery_and_a_refused_call_stops_with_one_line() -> None:
    fake = FakeKinesis()
    fake.create_stream("s", shards=1)
    written = fake.put("s", writes(10, 1, "a"))
    fake.fail("list_shards", None, "throttled", "transient")
    part = reader(fake, "s", bounded=False)
    later = fake.clock.now + 4
    items = drain(part, fake, until=lambda _: fake.clock.now > later)
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    listings = fake.times("list_shards")
    assert len(listings) >= 4 and fake.raised == ["throttled", "transient"]
    assert min(b - a for a, b in itertools.pairwise(listings)) >= 1.0  # retried a discovery period apart
    fake.fail("get_records", "refused")
    with pytest.raises(KinesisSourceError) as refused:
        drain(part, fake)
    assert "GetRecords" in str(refused.value) and "IAM" in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_stream_or_an_unreachable_endpoint_at_start_fails_with_one_line() -> None:
    fake = FakeKinesis()
    with pytest.raises(KinesisUnavailable) as missing:
        reader(fake, "nope", streams_setting="IMPRESSIONS_TOPIC")
    assert "'nope'" in str(missing.value) and "IMPRESSIONS_TOPIC" in str(missing.value)
    fake.create_stream("s")
    fake.fail("list_shards", "unreachable")
    with pytest.raises(KinesisUnavailable) as unreachable:
        reader(fake, "s", endpoint_url="http://127.0.0.1:9")
    assert "http://127.0.0.1:9" in str(unreachable.value) and "KINESIS_ENDPOINT_URL" in str(unreachable.value)


def test_bounded_reading_stops_at_the_tip_of_open_shards_and_the_end_of_closed_ones() -> None:
    fake = FakeKinesis()
    (shard,) = fake.create_stream("s", shards=1)
    written = fake.put("s", writes(30, 3, "a"))
    fake.split("s", shard)
    written += fake.put("s", writes(30, 3, "b"))
    part = reader(fake, "s")
    items = drain(part, fake)
    assert_read_as_written(items, written, fake, "s")
    assert part.next_awake() is None
    with pytest.raises(StopIteration):
        part.next_batch()


def test_latest_reads_only_what_arrives_after_the_start_and_a_resume_before_the_first_record_skips_nothing() -> None:
    fake = FakeKinesis()
    first, _ = fake.create_stream("s", shards=2)
    fake.put("s", writes(10, 5, "old"))
    fake.split("s", first)  # a closed shard: LATEST never reads it
    fake.clock.advance(1)
    part = reader(fake, "s", bounded=False, start=("LATEST", None))
    later = fake.clock.now + 2
    assert drain(part, fake, until=lambda _: fake.clock.now > later) == []
    assert first not in {c.shard for c in fake.calls}
    snapshot = pickle.loads(pickle.dumps(part.snapshot()))
    assert {entry["pos"][0] for entry in snapshot[0]["shards"].values()} == {"AT_TIMESTAMP"}
    fake.expire_iterators()  # renewed, they start at the start time, not at the tip: what came meanwhile is read
    new = fake.put("s", writes(10, 5, "new"))
    items = drain(part, fake, until=lambda items: len(items) >= 10)
    assert sorted(seq for _, _, seq, _ in items) == sorted(seq for _, _, seq in new)
    resumed = drain(reader(fake, "s", *snapshot), fake)
    assert sorted(seq for _, _, seq, _ in resumed) == sorted(seq for _, _, seq in new)


def test_an_idle_stream_is_not_polled_before_its_time() -> None:
    fake = FakeKinesis()
    fake.create_stream("s", shards=2)
    part = reader(fake, "s", bounded=False, idle_poll_seconds=1.0, discovery_seconds=10.0)
    assert part.next_batch() == []  # one read per shard: both at their tip
    wake = part.next_awake()
    assert wake is not None and 0.9 < (wake - datetime.now(UTC)).total_seconds() <= 1.0
    for _ in range(int(0.9 / STEP)):  # a scheduler that ignored next_awake still gets no extra calls
        fake.clock.advance(STEP)
        assert part.next_batch() == []
    assert len(fake.times("get_records")) == 2
    fake.clock.advance(0.2)
    part.next_batch()
    assert len(fake.times("get_records")) == 4
