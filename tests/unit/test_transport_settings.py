"""Each transport's settings are read and checked only when TRANSPORT names it; the parsing is shared."""

from __future__ import annotations

import pytest

from connectors.env import Env
from connectors.errors import ConfigError
from connectors.transports import kafka_native
from connectors.transports.kinesis.settings import KinesisConfigError, KinesisSettings
from dataflows.settings import BookingSettings, MovieImpressionsSettings

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
