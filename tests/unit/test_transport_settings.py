"""Each transport's settings are read and checked only when TRANSPORT names it; the parsing is shared."""

from __future__ import annotations

import sys
import types

import pytest

from connectors.env import Env
from connectors.errors import ConfigError
from connectors.transports import kafka_native
from connectors.transports.kinesis.settings import KinesisConfigError, KinesisSettings
from dataflows import settings as settings_module
from dataflows.settings import READERS, BookingSettings, MovieImpressionsSettings, choose_reader

JOBS = [MovieImpressionsSettings, BookingSettings]

# Each alone stops a Kafka run's settings check (test_kafka_client.py, test_start_settings.py hold the messages).
BAD_KAFKA = {
    "KAFKA_BROKERS": "no-port-here",
    "KAFKA_SECURITY_PROTOCOL": "CARRIER_PIGEON",
    "KAFKA_PROPERTIES": "not a pair",
    "KAFKA_BATCH_SIZE": "lots",
    "KAFKA_READER": "fastest",
}
BAD_KINESIS = {
    "KINESIS_STREAMS": " , ",
    "KINESIS_ENDPOINT_URL": "ftp://nowhere",
    "KINESIS_START_POSITION": "SOMEWHERE",
    "KINESIS_MAX_RECORDS": "many",
}


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize(("name", "value"), BAD_KAFKA.items())
def test_a_bad_kafka_setting_stops_a_kafka_run(job, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        job.from_env({name: value})


def test_the_native_reader_where_it_is_not_built_is_one_line_naming_the_setting(monkeypatch) -> None:
    monkeypatch.setattr("builtins.__import__", _without("waxstreams_native"))
    monkeypatch.setattr(kafka_native, "_module", None)
    monkeypatch.setattr(kafka_native, "_unavailable", None)
    with pytest.raises(ConfigError) as refused:
        MovieImpressionsSettings.from_env({"KAFKA_READER": "native"})
    line = str(refused.value)
    assert "\n" not in line and line.startswith("KAFKA_READER=native: ") and "make install" in line
    assert "unset KAFKA_READER" in line


@pytest.mark.parametrize(
    ("requested", "why_not", "expected"),
    [
        ("confluent", None, "confluent"),
        ("confluent", "not built: build it", "confluent"),
        ("native", None, "native"),
        ("auto", None, "native"),
        ("auto", "not built: build it", "confluent"),
    ],
)
def test_the_reader_chosen(requested: str, why_not: str | None, expected: str) -> None:
    reader, note = choose_reader(requested, why_not)
    assert reader == expected
    if requested == "auto" and why_not is not None:  # the one line a fallback logs: why and the fix
        assert note.startswith("KAFKA_READER=auto: reading Kafka with confluent-kafka") and note.endswith(why_not)
    else:
        assert note == ""


def test_native_asked_for_where_it_cannot_read_stops_the_run() -> None:
    with pytest.raises(ConfigError, match=r"^KAFKA_READER=native: not built: build it, or unset KAFKA_READER$"):
        choose_reader("native", "not built: build it")


def test_auto_where_the_native_reader_is_not_built_reads_with_confluent_kafka_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr("builtins.__import__", _without("waxstreams_native"))
    monkeypatch.setattr(kafka_native, "_module", None)
    monkeypatch.setattr(kafka_native, "_unavailable", None)
    kafka = MovieImpressionsSettings.from_env({"KAFKA_READER": "auto"}).kafka
    assert kafka is not None and kafka.reader == "confluent"
    assert "\n" not in kafka.reader_note and "waxstreams_native" in kafka.reader_note
    assert "make install" in kafka.reader_note


def test_auto_where_the_native_reader_can_read_uses_it(monkeypatch) -> None:
    monkeypatch.setattr(kafka_native, "unusable", lambda config: None)
    kafka = BookingSettings.from_env({"KAFKA_READER": "auto"}).kafka
    assert kafka is not None and (kafka.reader, kafka.reader_note) == ("native", "")


def test_confluent_does_not_look_for_the_native_reader(monkeypatch) -> None:
    def looked(config: object) -> str:
        msg = "the native reader was looked for"
        raise AssertionError(msg)

    monkeypatch.setattr(kafka_native, "unusable", looked)
    kafka = MovieImpressionsSettings.from_env({"KAFKA_READER": "confluent"}).kafka
    assert kafka is not None and (kafka.reader, kafka.reader_note) == ("confluent", "")


@pytest.mark.parametrize("default", READERS)
def test_unset_is_the_default_and_flipping_it_is_one_value(default: str, monkeypatch) -> None:
    monkeypatch.setattr(kafka_native, "unusable", lambda config: None)
    monkeypatch.setattr(settings_module, "READER_DEFAULT", default)
    kafka = MovieImpressionsSettings.from_env({}).kafka
    assert kafka is not None and kafka.reader == ("confluent" if default == "confluent" else "native")


def test_a_consumer_setting_the_native_reader_does_not_call_makes_it_unusable(monkeypatch) -> None:
    monkeypatch.setattr(kafka_native, "unavailable", lambda: None)
    assert kafka_native.unusable({"security.protocol": "SSL", "oauth_cb": print, "group.id": "g"}) is None
    why = kafka_native.unusable({"stats_cb": print})
    assert why is not None and why.startswith("Kafka consumer setting stats_cb: the native reader does not call it")


def test_a_native_reader_built_from_an_older_checkout_is_not_used(monkeypatch) -> None:
    """Its lag gauge would be missing: `auto` falls back, `native` stops, both with the fix."""
    old = types.ModuleType("waxstreams_native")
    old.PartitionReader = type("PartitionReader", (), {"read": None, "commit": None})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "waxstreams_native", old)
    monkeypatch.setattr(kafka_native, "_module", None)
    monkeypatch.setattr(kafka_native, "_unavailable", None)
    why = kafka_native.unavailable()
    assert why is not None and "older than this checkout" in why and "make install" in why


def _without(module: str):
    real = __import__

    def find(name, *args, **kwargs):
        if name == module:
            msg = f"No module named {module!r}"
            raise ImportError(msg)
        return real(name, *args, **kwargs)

    return find


@pytest.mark.parametrize("job", JOBS)
def test_a_kinesis_run_neither_reads_nor_checks_the_kafka_settings(job) -> None:
    settings = job.from_env({"TRANSPORT": "kinesis", "KINESIS_STREAMS": "impressions", **BAD_KAFKA})
    assert settings.kafka is None
    assert settings.kinesis == KinesisSettings(streams=("impressions",))


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize(("name", "value"), BAD_KINESIS.items())
def test_a_bad_kinesis_setting_stops_a_kinesis_run_at_its_settings_check(job, name: str, value: str) -> None:
    with pytest.raises(KinesisConfigError, match=name):
        job.from_env({"TRANSPORT": "kinesis", name: value})


@pytest.mark.parametrize("job", JOBS)
def test_a_kafka_run_neither_reads_nor_checks_the_kinesis_settings(job) -> None:
    settings = job.from_env({"KAFKA_BROKERS": "broker-1:9092,broker-2:9092", **BAD_KINESIS})
    assert settings.kinesis is None
    assert settings.kafka is not None and settings.kafka.brokers == ["broker-1:9092", "broker-2:9092"]


def test_kinesis_and_job_settings_word_a_wrong_number_and_boolean_alike() -> None:
    with pytest.raises(KinesisConfigError) as kinesis:
        KinesisSettings.from_env({"KINESIS_DISCOVERY_SECONDS": "soon"})
    assert str(kinesis.value) == "KINESIS_DISCOVERY_SECONDS='soon' is not a number: set it to e.g. 10.0"
    with pytest.raises(KinesisConfigError) as kinesis:
        KinesisSettings.from_env({"BOUNDED": "maybe"})
    with pytest.raises(ConfigError) as job:
        MovieImpressionsSettings.from_env({"BOUNDED": "maybe"})
    assert str(kinesis.value) == str(job.value) == "BOUNDED='maybe' is not a boolean: set it to true or false"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IDLE_TIMEOUT_SECONDS": "0"}, "IDLE_TIMEOUT_SECONDS=0 is below the minimum 1: set it to e.g. 60"),
        ({"IDLE_TIMEOUT_SECONDS": "1m"}, "IDLE_TIMEOUT_SECONDS='1m' is not a number: set it to e.g. 60"),
    ],
)
def test_a_duration_is_read_in_seconds(env: dict[str, str], message: str) -> None:
    assert Env({"IDLE_TIMEOUT_SECONDS": "2.5"}).seconds("IDLE_TIMEOUT_SECONDS", 60, minimum=1).total_seconds() == 2.5
    with pytest.raises(ConfigError) as raised:
        Env(env).seconds("IDLE_TIMEOUT_SECONDS", 60, minimum=1)
    assert str(raised.value) == message
