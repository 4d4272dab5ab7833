"""Kinesis settings, record accessors and PutRecords batching: no services."""

from __future__ import annotations

from datetime import UTC, datetime

import confluent_kafka
import pytest

from connectors.transports.kinesis_sink import (
    MAX_BYTES_PER_CALL,
    MAX_RECORD_BYTES,
    KinesisSinkError,
    plan_calls,
    validate,
)
from connectors.transports.kinesis_source import (
    LOCAL_KINESIS,
    KinesisConfigError,
    KinesisRecord,
    KinesisSettings,
    StatefulKinesisSource,
)


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


def test_put_records_calls_hold_at_most_500_records_and_5_mib() -> None:
    assert [len(c) for c in plan_calls([("k", b"v")] * 1001)] == [500, 500, 1]
    one_mib = ("k", b"x" * (MAX_RECORD_BYTES - 1))  # 1 MiB with its key
    assert [len(c) for c in plan_calls([one_mib] * 11)] == [5, 5, 1]  # 5 x 1 MiB = 5 MiB exactly fits
    assert sum(len(k) + len(d) for k, d in plan_calls([one_mib] * 6)[0]) == MAX_BYTES_PER_CALL
    items = [(f"k{i}", b"y" * (i * 1000)) for i in range(300)]
    assert [item for call in plan_calls(items) for item in call] == items  # order kept


@pytest.mark.parametrize(
    ("key", "data", "expected"),
    [
        ("", b"x", "1..256"),
        ("k" * 257, b"x", "1..256"),
        ("ключ", b"x" * (MAX_RECORD_BYTES - 7), "over the 1 MiB limit"),  # the key counts in UTF-8 bytes
        ("k", "text", "takes (partition_key: str, data: bytes)"),
    ],
)
def test_records_kinesis_would_refuse_raise_one_clear_error(key: str, data: bytes, expected: str) -> None:
    with pytest.raises(KinesisSinkError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate("out", key, data)
    validate("out", "k" * 256, b"x" * (MAX_RECORD_BYTES - 256))  # at the limits: fine
