"""Kinesis settings, record accessors, and the sink's wire format and PutRecords calls: no services."""

from __future__ import annotations

import json
import re
import zlib
from datetime import UTC, datetime

import confluent_kafka
import pytest

from connectors.recovery_store.namespace import new_namespace
from connectors.transports.kinesis.record import KinesisRecord
from connectors.transports.kinesis.records import (
    MAX_BYTES_PER_CALL,
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    KinesisSinkError,
    Pending,
    Queues,
    RecordIds,
    envelope,
    later,
    max_record_bytes,
    namespace_start_ms,
    record_id,
    split_id,
)
from connectors.transports.kinesis.settings import LOCAL_KINESIS, KinesisConfigError, KinesisSettings
from connectors.transports.kinesis.sink import KinesisSink
from connectors.transports.kinesis.source import StatefulKinesisSource


def test_settings_default_to_the_local_stack() -> None:
    settings = KinesisSettings.from_env({})
    assert settings.streams == ("movie-impressions",)
    assert settings.endpoint_url == LOCAL_KINESIS and settings.region == "us-east-1"
    assert settings.start_position == "TRIM_HORIZON" and not settings.bounded


def test_settings_from_the_environment() -> None:
    settings = KinesisSettings.from_env(
        {
            "KINESIS_STREAMS": " a, b ,",
            "KINESIS_ENDPOINT_URL": "",  # empty: AWS itself
            "AWS_REGION": "eu-west-1",
            "KINESIS_START_POSITION": "at_timestamp",
            "KINESIS_START_TIMESTAMP": "2026-01-31T08:00:00Z",
            "KINESIS_DISCOVERY_SECONDS": "2.5",
            "KINESIS_MAX_RECORDS": "500",
            "BOUNDED": "true",
            "KINESIS_SINK_RETRY_SECONDS": "60",
        }
    )
    assert settings.streams == ("a", "b") and settings.endpoint_url is None and settings.region == "eu-west-1"
    assert settings.start_position == "AT_TIMESTAMP"
    assert settings.start_timestamp == datetime(2026, 1, 31, 8, tzinfo=UTC)
    assert (settings.discovery_seconds, settings.max_records, settings.bounded, settings.sink_retry_seconds) == (
        2.5,
        500,
        True,
        60.0,
    )
    assert KinesisSettings.from_env({"KINESIS_START_TIMESTAMP": "1769846400000"}).start_timestamp == datetime(
        2026, 1, 31, 8, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"KINESIS_STREAMS": " , "}, "KINESIS_STREAMS"),
        ({"KINESIS_ENDPOINT_URL": "127.0.0.1:4568"}, "KINESIS_ENDPOINT_URL"),
        ({"KINESIS_START_POSITION": "EARLIEST"}, "KINESIS_START_POSITION"),
        ({"KINESIS_START_POSITION": "AT_TIMESTAMP"}, "KINESIS_START_TIMESTAMP"),
        ({"KINESIS_START_TIMESTAMP": "2026-01-31T08:00:00"}, "KINESIS_START_TIMESTAMP"),  # no offset
        ({"KINESIS_MAX_RECORDS": "10001"}, "KINESIS_MAX_RECORDS"),
        ({"KINESIS_MAX_RECORDS": "many"}, "KINESIS_MAX_RECORDS"),
        ({"KINESIS_DISCOVERY_SECONDS": "0"}, "KINESIS_DISCOVERY_SECONDS"),
        ({"KINESIS_IDLE_POLL_SECONDS": "0.01"}, "KINESIS_IDLE_POLL_SECONDS"),
        ({"BOUNDED": "maybe"}, "BOUNDED"),
        ({"KINESIS_SINK_RETRY_SECONDS": "-1"}, "KINESIS_SINK_RETRY_SECONDS"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(env: dict[str, str], setting: str) -> None:
    with pytest.raises(KinesisConfigError) as failure:
        KinesisSettings.from_env(env)
    assert str(failure.value).startswith(setting) or f" {setting}" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_source_parameters_are_checked() -> None:
    with pytest.raises(KinesisConfigError):
        StatefulKinesisSource(["a"], lambda *a: ([], None), None, start_position="AT_TIMESTAMP")
    with pytest.raises(KinesisConfigError):
        StatefulKinesisSource(["a", "a"], lambda *a: ([], None), None)
    assert StatefulKinesisSource(["a", "b"], lambda *a: ([], None), None).list_parts() == ["a", "b"]


def test_record_has_the_accessors_of_a_kafka_message() -> None:
    record = KinesisRecord("s", "shardId-000000000001", "4968054435", "user-7", b'{"x": 1}', 1_700_000_000_123)
    for name in ("value", "key", "topic", "partition", "offset", "timestamp", "error"):
        assert callable(getattr(confluent_kafka.Message, name)) and callable(getattr(record, name))
    assert (record.value(), record.key(), record.topic(), record.partition(), record.offset()) == (
        b'{"x": 1}',
        b"user-7",
        "s",
        "shardId-000000000001",
        "4968054435",
    )
    assert record.timestamp() == (confluent_kafka.TIMESTAMP_LOG_APPEND_TIME, 1_700_000_000_123)
    assert record.error() is None
    assert (record.stream(), record.shard_id(), record.sequence_number(), record.partition_key()) == (
        "s",
        "shardId-000000000001",
        "4968054435",
        "user-7",
    )


def pending(key: str, size: int = 10, n: int = 0) -> Pending:
    return Pending(f"{key}-{n}", key, b"x" * (size - len(key)))


def test_a_call_takes_one_record_per_key_up_to_500_records_and_5_mib() -> None:
    many_keys = Queues(pending(f"k{i}") for i in range(1001))
    assert len(many_keys.next_call()) == 500
    one_mib = [pending(f"k{i}", MAX_RECORD_BYTES) for i in range(11)]
    assert len(Queues(one_mib).next_call()) == 5  # 5 x 1 MiB = 5 MiB exactly fits
    assert sum(p.size for p in Queues(one_mib).next_call()) == MAX_BYTES_PER_CALL


def test_a_keys_next_record_waits_until_the_one_before_is_confirmed() -> None:
    records = [pending(key, n=n) for n, key in enumerate("aabacb")]
    queues = Queues(records)
    first = queues.next_call()
    assert [p.id for p in first] == ["a-0", "b-2", "c-4"]  # keys in the order they came, each once
    queues.confirmed(first[1])  # b-2 went in; a-0 and c-4 failed
    assert [p.id for p in queues.next_call()] == ["a-0", "b-5", "c-4"]
    with pytest.raises(AssertionError):
        queues.confirmed(records[1])  # a-1 before a-0: a bug, not a reorder
    for p in [records[0], records[4], records[5], records[1], records[3]]:
        queues.confirmed(p)
    assert not queues and queues.next_call() == []


def test_the_envelope_puts_the_id_first_and_keeps_the_value_as_it_was() -> None:
    assert envelope("out", "u1", "k", b'{"a": 1}') == b'{"outputId":"u1","a": 1}'
    assert envelope("out", "u1", "k", b"{}") == b'{"outputId":"u1"}'
    assert envelope("out", "u1", "k", b"{ }") == b'{"outputId":"u1" }'
    assert json.loads(envelope("out", "s:shardId-1:4968#2", "k", b'{"x": {"outputId": 1}}')) == {
        "outputId": "s:shardId-1:4968#2",
        "x": {"outputId": 1},  # a nested field of that name is the value's own
    }
    assert record_id(envelope("out", "s:0:12", "k", b'{"a": "b"}')) == "s:0:12"
    assert record_id(b'{"a": 1}') is None and record_id(b"not json") is None
    for value in (b'{"a": 1}', b"{}", b'{"outputId2": ","}'):
        assert split_id(envelope("out", "u,1", "k", value)) == ("u,1", value)
    assert split_id(b'{"a": 1}') == (None, b'{"a": 1}')


@pytest.mark.parametrize(
    ("unit", "key", "value", "expected"),
    [
        ("u", "", b"{}", "1..256"),
        ("u", "k" * 257, b"{}", "1..256"),
        ("", "k", b"{}", "printable ASCII"),
        ('a"b', "k", b"{}", "printable ASCII"),
        ("u" * (MAX_ID_CHARS + 1), "k", b"{}", "printable ASCII"),
        ("u", "k", b"[1]", "JSON object values"),
        ("u", "k", b'{"outputId": 1}', "its own 'outputId' field"),
        ("u", "ключ", b'{"a":"' + b"x" * (MAX_RECORD_BYTES - 30) + b'"}', "over the 1 MiB limit"),  # the key in bytes
    ],
)
def test_what_kinesis_or_a_reader_could_not_take_raises_one_line(
    unit: str, key: str, value: bytes, expected: str
) -> None:
    with pytest.raises(KinesisSinkError, match=re.escape(expected)) as failure:
        envelope("out", unit, key, value)
    assert "\n" not in str(failure.value) and "'out'" in str(failure.value)


def test_max_record_bytes_leaves_room_for_the_longest_id() -> None:
    unit, key = "u" * MAX_ID_CHARS, "k" * 256
    value = b'{"p":"' + b"x" * (max_record_bytes() - len(key) - 8) + b'"}'
    assert len(key) + len(value) == max_record_bytes() == KinesisSink.max_record_bytes()
    assert len(envelope("out", unit, key, value)) + len(key) == MAX_RECORD_BYTES
    with pytest.raises(KinesisSinkError, match="over the 1 MiB limit"):
        envelope("out", unit, key, value[:-2] + b'x"}')


def test_a_units_further_records_in_an_epoch_get_their_own_ids() -> None:
    ids = RecordIds()
    assert [ids.next(u) for u in ["m1", "m2", "m1", "m1"]] == ["m1", "m2", "m1#1", "m1#2"]
    ids.epoch_done()
    assert ids.next("m1") == "m1"


def test_a_run_namespace_tells_when_it_began_and_sequence_numbers_compare_as_numbers() -> None:
    assert namespace_start_ms("20260131T080000Z-1a2b3c") == 1_769_846_400_000
    assert abs(namespace_start_ms(new_namespace()) - datetime.now(UTC).timestamp() * 1000) < 2000
    assert namespace_start_ms("") is None and namespace_start_ms("my-run") is None
    assert later(None, "5") == "5" and later("9", "10") == "10" and later("10", "9") == "10"


def test_sink_partitions_are_zero_padded_and_routed_by_crc32() -> None:
    assert KinesisSink("s").list_parts() == ["p00", "p01", "p02", "p03"]
    assert KinesisSink("s", partitions=120).list_parts()[-1] == "p119"
    assert KinesisSink("s").part_fn("booking-7") == zlib.crc32(b"booking-7")
    with pytest.raises(ValueError, match="at least 1"):
        KinesisSink("s", partitions=0)
