"""RecordBatch, the columns every transport hands the batch steps: positions, the shapes of
its values (a list, a polars Binary Series), Kinesis sequence numbers, Kafka offset gaps."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from confluent_kafka import Message

from connectors.transports.batch import RecordBatch
from connectors.transports.kafka_partition import StatefulKafkaPartition
from connectors.transports.kinesis.record import KinesisRecord, record_batch
from dataflows.booking_rules import DEFAULT_EVENT, BookingRecord, read_booking_batch
from dataflows.dead_letters import DeadLetter, LateEvent
from dataflows.event_time import NO_WATERMARK
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import WindowSlice
from tests.support.factories import record_batch as batch_of_values
from tests.support.factories import tally_dict

W = 900_000
BASE = 1_546_844_400_000  # a window start
SEQUENCE = "4" * 128  # Kinesis sequence numbers: up to 128 digits


def event(movie: str, user: str, ts: int) -> bytes:
    return json.dumps({"movieId": movie, "userId": user, "timestamp": ts}).encode()


# Clean, late (its window closed 10 s after the event before it), invalid UTF-8, bad JSON, missing.
MIXED = [
    event("m1", "u1", BASE + 1000),
    event("m1", "u2", BASE + W + 20_000),
    event("m2", "u9", BASE + 5),
    b"\xff\xfe",
    b"{oops",
    None,
    event("m2", "u1", BASE + W + 21_000),
]


def slices(values: list[bytes | None] | RecordBatch, **batch: object) -> tuple[list, list, dict, int]:
    records = values if isinstance(values, RecordBatch) else batch_of_values(values, **batch)  # type: ignore[arg-type]
    items, newest = slice_batch("0-t", records, NO_WATERMARK, window_ms=W, max_out_of_orderness_ms=10_000)
    dead = [d.to_json() for d in items if isinstance(d, DeadLetter)]
    late = [e.to_json() for e in items if isinstance(e, LateEvent)]
    tallies = {(s.shard, s.window_start): tally_dict(s.tallies) for s in items if isinstance(s, WindowSlice)}
    return dead, late, tallies, newest


def test_a_binary_series_and_a_list_give_the_same_step_output_byte_for_byte() -> None:
    listed = slices(MIXED, offsets=[3, 4, 5, 6, 7, 8, 9])
    assert listed == slices(MIXED, offsets=[3, 4, 5, 6, 7, 8, 9], series=True)
    dead, late, tallies, newest = listed
    assert [json.loads(d)["offset"] for d in dead] == [6, 7, 8]
    assert [json.loads(e)["offset"] for e in late] == [5]
    assert sum(count for t in tallies.values() for count, _ in t.values()) == 3  # 4 valid, 1 late
    assert newest == BASE + W + 21_000


def test_dead_letters_and_late_events_carry_the_position_and_raw_value_exactly() -> None:
    """The bytes written before columns: json.dumps of the fields in this order, offsets as JSON numbers."""
    dead, late, _, _ = slices(MIXED, offsets=[3, 4, 5, 6, 7, 8, 9], partition=2, topic="imp")
    assert dead[1] == (
        b'{"error": "not valid JSON: JSON is malformed: object keys must be strings (byte 1)", "kind": "invalid", '
        b'"topic": "imp", "partition": 2, "offset": 7, "raw": "{oops", "rawEncoding": "utf-8"}'
    )
    assert json.loads(dead[0])["rawEncoding"] == "base64" and json.loads(dead[2])["raw"] is None
    assert late == [
        b'{"reason": "window [1546844400000, 1546845300000) closed at watermark 1546845310000", "topic": "imp", '
        b'"partition": 2, "offset": 5, "timestamp": 1546844400005, "watermark": 1546845310000, '
        b'"windowStart": 1546844400000, "windowEnd": 1546845300000, '
        b'"raw": "{\\"movieId\\": \\"m2\\", \\"userId\\": \\"u9\\", \\"timestamp\\": 1546844400005}", '
        b'"rawEncoding": "utf-8"}'
    ]


def test_a_kafka_batch_with_offset_gaps_keeps_each_records_own_offset() -> None:
    """Compacted and transactional topics leave gaps: never the first offset plus the index."""
    offsets = [100, 103, 104, 250, 251, 400, 1_000_000_007]
    messages = [Message(topic="imp", partition=5, offset=o, value=v) for o, v in zip(offsets, MIXED, strict=True)]
    batch = RecordBatch.of_messages(messages)
    assert (batch.stream, batch.partition, len(batch)) == ("imp", 5, 7)
    assert batch.offsets.tolist() == offsets and batch.offsets.dtype == np.int64
    assert [batch.position(i) for i in (0, 6)] == [("imp", 5, 100), ("imp", 5, 1_000_000_007)]
    assert all(type(batch.position(i)[2]) is int for i in range(len(batch)))
    dead, late, _, _ = slices(RecordBatch.of_messages(messages))
    assert [json.loads(d)["offset"] for d in dead] == [250, 251, 400]
    assert [json.loads(e)["offset"] for e in late] == [104]
    # The same batch from columns (a native reader's shape) writes the same bytes.
    assert slices(RecordBatch.of_messages(messages)) == slices(
        MIXED, offsets=offsets, series=True, partition=5, topic="imp"
    )


class CountingMessage:
    """A message that counts the calls of its offset accessor."""

    calls = 0

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k%d" % self._offset

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        CountingMessage.calls += 1
        return self._offset


def test_from_kafka_messages_only_the_values_are_read_until_a_step_asks_for_more() -> None:
    CountingMessage.calls = 0
    messages = [CountingMessage(event("m", "u", BASE + i), 10 + 2 * i) for i in range(1000)]
    batch = RecordBatch.of_messages(messages)
    slices(batch)  # all clean and on time: no position needed
    assert CountingMessage.calls == 0
    assert batch.position(3) == ("t", 0, 16) and CountingMessage.calls == 1
    assert batch.offsets[-1] == 10 + 2 * 999 and batch.keys[2] == b"k14"


def kinesis_batch(values: list[bytes]) -> RecordBatch:
    records = [
        KinesisRecord("bookings", "shardId-000000000002", SEQUENCE[:-3] + f"{i:03d}", f"key-{i}", v, 1_700_000_000_000)
        for i, v in enumerate(values)
    ]
    return record_batch("bookings", "shardId-000000000002", records)


def test_kinesis_sequence_numbers_stay_strings_in_positions_and_outputs() -> None:
    valid = json.dumps({"bookingId": "b-1", "eventType": "X", "timestamp": BASE}).encode()
    batch = kinesis_batch([valid, b"nope"])
    assert batch.offsets == [SEQUENCE[:-3] + "000", SEQUENCE[:-3] + "001"]
    assert batch.keys == [b"key-0", b"key-1"] and batch.partition == "shardId-000000000002"
    assert batch.position(1) == ("bookings", "shardId-000000000002", SEQUENCE[:-3] + "001")
    items, _ = read_booking_batch(
        "bookings/shardId-000000000002",
        batch,
        NO_WATERMARK,
        schemas={"bookings": DEFAULT_EVENT},
        max_out_of_orderness_ms=0,
    )
    [dead] = [d for d in items if isinstance(d, DeadLetter)]
    [record] = [r for r in items if isinstance(r, BookingRecord)]
    assert record.position == f"bookings:shardId-000000000002:{SEQUENCE[:-3]}000"
    assert dead.position.key() == f"bookings:shardId-000000000002:{SEQUENCE[:-3]}001".encode()
    fields = json.loads(dead.to_json())
    assert (fields["partition"], fields["offset"]) == ("shardId-000000000002", SEQUENCE[:-3] + "001")


def test_a_series_is_listed_only_when_a_record_needs_judging_alone() -> None:
    series = pl.Series(MIXED, dtype=pl.Binary)
    batch = RecordBatch("t", 0, series, np.arange(len(MIXED), dtype=np.int64))
    assert batch.values is series
    assert [batch.value(i) for i in range(len(batch))] == MIXED == batch.value_list()
    assert batch.keys == [None] * len(MIXED)


def test_columns_of_the_wrong_type_or_length_are_refused() -> None:
    with pytest.raises(TypeError, match="dtype Binary"):
        RecordBatch("t", 0, pl.Series(["a"]), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="differ in length"):
        RecordBatch("t", 0, [b"a", b"b"], np.zeros(1, np.int64))


def test_the_kafka_reader_cuts_at_the_stop_offset_and_hands_the_gapped_offsets_on() -> None:
    offsets = [100, 103, 104, 250, 251, 400, 1_000_000_007]
    messages = [Message(topic="imp", partition=5, offset=o, value=v) for o, v in zip(offsets, MIXED, strict=True)]

    class Consumer:
        def consume(self, count: int, timeout: float) -> list[Message]:
            return messages

    class Part:
        _topic, _part_idx, _batch_size, _eof, _offset = "imp", 5, 100, False, 100
        _consumer = Consumer()

    seen: list[RecordBatch] = []

    def step(part: str, batch: RecordBatch, state: int) -> tuple[list, int]:
        seen.append(batch)
        items, state = slice_batch(part, batch, state, window_ms=W, max_out_of_orderness_ms=10_000)
        return items, state

    kafka_part = Part()
    reader = StatefulKafkaPartition(kafka_part, "5-imp", step, NO_WATERMARK, False, stop_offset=401)
    items = reader.next_batch()
    assert [b.offsets.tolist() for b in seen] == [offsets[:6]]
    assert kafka_part._eof and kafka_part._offset == 401
    assert [d.position.offset for d in items if isinstance(d, DeadLetter)] == [250, 251, 400]
