"""Every error a user can cause derives from one root, and the job entry turns any of them into one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

import connectors
import dataflows
from connectors.errors import ConfigError, WaxstreamsError
from connectors.recovery_store.errors import RecoveryStoreError
from connectors.sinks.delta_table import DeltaSinkError
from connectors.sinks.s3_client import S3SinkError
from connectors.transports.kafka_client import KafkaConfigError
from connectors.transports.kafka_startup_check import KafkaUnavailable
from connectors.transports.kinesis.settings import KinesisConfigError
from dataflows import skeleton

# Exceptions that never end a job with their message: each is caught inside its module's
# own code and turned into something else. A new class goes here only with such a reason.
INTERNAL = {
    "dataflows.untrusted_json._RepeatedKey": "caught by the decoder, becomes InvalidEvent",
    "dataflows.untrusted_json.InvalidEvent": "a record's rejection: becomes a dead letter, the job goes on",
    "connectors.transports.kinesis.proxy.ProxyError": "the reader retries it or raises a Kinesis error from it",
    "connectors.transports.memory.Aborted": "the in-memory test transport's asked-for crash",
    "connectors.transports.kafka_tx_retry.Abortable": "the Kafka sink writes the epoch again or raises KafkaSinkError",
}


def product_exceptions() -> Iterator[tuple[str, type[BaseException]]]:
    for package in (connectors, dataflows):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(module_info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                    yield f"{module.__name__}.{name}", value


def test_the_walk_finds_the_known_errors() -> None:
    found = dict(product_exceptions())
    for known in (S3SinkError, DeltaSinkError, RecoveryStoreError, KafkaUnavailable, KinesisConfigError):
        assert found[f"{known.__module__}.{known.__name__}"] is known
    assert set(INTERNAL) <= set(found), "an INTERNAL entry names a class that no longer exists"


def test_every_product_error_derives_from_the_root() -> None:
    strays = [
        name for name, cls in product_exceptions() if name not in INTERNAL and not issubclass(cls, WaxstreamsError)
    ]
    assert strays == [], f"derive these from connectors.errors.WaxstreamsError (or list why not in INTERNAL): {strays}"


def test_the_root_keeps_each_errors_builtin_base() -> None:
    assert issubclass(S3SinkError, RuntimeError) and issubclass(KafkaUnavailable, RuntimeError)
    for settings_error in (KinesisConfigError, KafkaConfigError):
        assert issubclass(settings_error, ConfigError) and issubclass(settings_error, ValueError)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("WINDOW_MINUTES=7 does not divide a day: use e.g. 5, 15, 30 or 60"),
        KafkaUnavailable("Kafka at 127.0.0.1:1 cannot be reached: start it or fix KAFKA_BROKERS"),
        DeltaSinkError("the table is fenced: stop the other writer"),
    ],
)
def test_the_job_entry_ends_any_user_error_with_its_one_line(error: WaxstreamsError) -> None:
    def build(environ: object, argv: object) -> object:
        raise error

    with pytest.raises(SystemExit) as ended:
        skeleton.flow_from_env("movie_impressions", build)  # type: ignore[arg-type]
    assert ended.value.code == f"movie_impressions: {error}"


def test_the_job_entry_lets_a_bug_show_its_traceback() -> None:
    def build(environ: object, argv: object) -> object:
        bug = "a bug, not a user's error"
        raise KeyError(bug)

    with pytest.raises(KeyError):
        skeleton.flow_from_env("movie_impressions", build)  # type: ignore[arg-type]
