"""The native partition reader (connectors/transports/kafka_native.py, native/) against real brokers:
the same records, offsets (with the gaps transactions leave), timestamps and end of partition as
confluent-kafka's Consumer reading the same partition from the same start; commits; the one-line
errors; and the secured listeners (SASL_SSL/SCRAM, mTLS, OAUTHBEARER with librdkafka's JWT and
with tokens made in Python and refreshed). Records are produced through the PLAINTEXT listener,
independently of the code under test.

The extension is optional (built by `make install` when cargo is on PATH): without cargo these
tests are skipped with the reason; with cargo and no extension they fail.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from connectors.transports import kafka_native
from connectors.transports.kafka_client import KafkaConfigError
from connectors.transports.kafka_native import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, NativePartitionReader
from connectors.transports.kafka_problems import ClientProblems
from dataflows.settings import KafkaSettings
from devstack.kafka import create_topics
from tests.support import oauth_tokens

_MISSING = kafka_native.unavailable()
if _MISSING is not None and shutil.which("cargo") is None:
    pytest.skip(f"no Rust toolchain, so no native reader: {_MISSING}", allow_module_level=True)

Row = tuple[int, bytes | None, bytes | None, int]  # offset, key, value, timestamp (ms)
BASE_TS = 1_700_000_000_000


@pytest.fixture(autouse=True)
def native_reader_built() -> None:
    assert _MISSING is None, _MISSING


def _topic(bootstrap: str) -> str:
    name = f"native-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [name], partitions=1)
    return name


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, int]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value, ts in records:
        producer.produce(topic, value=value, key=key, partition=0, timestamp=ts)
    assert producer.flush(30) == 0


def _produce_with_transactions(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None, int]]:
    """Plain records, then committed and aborted transactions: what a read_committed reader sees,
    in order. Each transaction leaves a control record, and aborted records are skipped: offset gaps."""
    kept = [
        (None if i % 7 == 0 else f"k{i}".encode(), None if i % 11 == 5 else f"v{i}".encode(), BASE_TS + i)
        for i in range(40)
    ]
    _produce(bootstrap, topic, kept)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"native-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for round_ in range(3):
        producer.begin_transaction()
        batch = [(b"tx", f"committed-{round_}-{i}".encode(), BASE_TS + 100 + i) for i in range(5)]
        for key, value, ts in batch:
            producer.produce(topic, value=value, key=key, partition=0, timestamp=ts)
        producer.commit_transaction(30)
        kept += batch
        producer.begin_transaction()
        for i in range(4):
            producer.produce(topic, value=f"aborted-{round_}-{i}".encode(), partition=0, timestamp=BASE_TS + 200 + i)
        producer.flush(30)
        producer.abort_transaction(30)
    tail = [(b"end", f"tail-{i}".encode(), BASE_TS + 300 + i) for i in range(3)]
    _produce(bootstrap, topic, tail)
    # A commit returns before its markers are written: until then the end a reader meets is the
    # open transaction's start. Wait for the whole topic to be readable.
    deadline = time.monotonic() + 90
    while (seen := len(read_confluent({"bootstrap.servers": bootstrap}, topic, OFFSET_BEGINNING))) < len(kept + tail):
        assert time.monotonic() < deadline, f"{seen} of {len(kept + tail)} records readable after 90 s"
    return kept + tail


def _consumer_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "group.id": f"native-{uuid.uuid4().hex[:8]}",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
        **config,
    }


def read_native(config: dict[str, Any], topic: str, start: int, batch: int = 7, timeout: float = 60) -> list[Row]:
    """Every record from `start` to the end of the partition, through the native reader."""
    rows: list[Row] = []
    with NativePartitionReader(_consumer_config(config), topic, 0, start) as reader:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = reader.read(batch, 0.2)
            assert len(got.values) == len(got.offsets) == len(got.timestamps) == len(got.keys)
            rows += zip(
                got.offsets.tolist(), got.keys.to_list(), got.values.to_list(), got.timestamps.tolist(), strict=True
            )
            if got.reached_end:
                return rows
    msg = f"no end of partition within {timeout} s ({len(rows)} records read)"
    raise AssertionError(msg)


def read_confluent(config: dict[str, Any], topic: str, start: int, timeout: float = 60) -> list[Row]:
    """The same through confluent-kafka's Consumer: the reference."""
    consumer = Consumer(_consumer_config(config))
    consumer.assign([TopicPartition(topic, 0, start)])
    rows: list[Row] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in consumer.consume(7, 0.2):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    return rows
                rows.append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
    finally:
        consumer.close()
    msg = f"no end of partition within {timeout} s"
    raise AssertionError(msg)


def test_same_records_offsets_gaps_and_end_as_confluent_kafka(kafka) -> None:
    topic = _topic(kafka.bootstrap)
    expected = _produce_with_transactions(kafka.bootstrap, topic)
    config = {"bootstrap.servers": kafka.bootstrap}

    native = read_native(config, topic, OFFSET_BEGINNING)

    assert native == read_confluent(config, topic, OFFSET_BEGINNING)
    assert [(k, v, ts) for _, k, v, ts in native] == expected  # committed only, in order, nulls kept
    offsets = [o for o, *_ in native]
    assert offsets == sorted(offsets) and offsets[-1] - offsets[0] + 1 > len(offsets)  # transactions' gaps


def test_start_from_a_middle_offset_and_from_the_end(kafka) -> None:
    topic = _topic(kafka.bootstrap)
    expected = _produce_with_transactions(kafka.bootstrap, topic)
    config = {"bootstrap.servers": kafka.bootstrap}
    offsets = [o for o, *_ in read_confluent(config, topic, OFFSET_BEGINNING)]
    middle = offsets[len(offsets) // 2]

    native = read_native(config, topic, middle)

    assert native == read_confluent(config, topic, middle)
    assert native[0][0] == middle and [(k, v, ts) for _, k, v, ts in native] == expected[len(offsets) // 2 :]
    assert read_native(config, topic, OFFSET_END) == []


def test_reads_on_after_the_end_and_commits_for_lag_tools(kafka) -> None:
    topic = _topic(kafka.bootstrap)
    _produce(kafka.bootstrap, topic, [(None, f"first-{i}".encode(), BASE_TS + i) for i in range(10)])
    config = _consumer_config({"bootstrap.servers": kafka.bootstrap})
    with NativePartitionReader(config, topic, 0, OFFSET_BEGINNING) as reader:
        values: list[bytes] = []
        while not (got := reader.read(100, 1.0)).reached_end:
            values += got.values.to_list()
        values += got.values.to_list()
        assert values == [f"first-{i}".encode() for i in range(10)]

        _produce(kafka.bootstrap, topic, [(None, f"second-{i}".encode(), BASE_TS + i) for i in range(5)])
        more: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = reader.read(100, 0.5)
            more += zip(got.offsets.tolist(), got.values.to_list(), strict=True)
            if got.reached_end and more:  # the end after the new records, not the one already seen
                break
        assert more == [(10 + i, f"second-{i}".encode()) for i in range(5)]

        reader.commit(15, asynchronous=False)
    probe = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": config["group.id"]})
    try:
        assert probe.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 15
    finally:
        probe.close()
    _produce(kafka.bootstrap, topic, [(None, b"after-commit", BASE_TS)])
    with NativePartitionReader({**config, "enable.partition.eof": True}, topic, 0, OFFSET_STORED) as reader:
        deadline = time.monotonic() + 30
        while not (got := reader.read(100, 0.5)).values.len() and time.monotonic() < deadline:
            pass
        assert got.offsets.tolist() == [15] and got.values.to_list() == [b"after-commit"]


@pytest.mark.parametrize(
    ("prop", "value", "named"),
    [
        ("fetch.wait.max.ms", "soon", "fetch.wait.max.ms"),
        ("no.such.property", "1", "no.such.property"),
        ("session.timeout.ms", "-5", "session.timeout.ms"),
    ],
)
def test_a_refused_property_is_one_line_naming_it(kafka, prop: str, value: str, named: str) -> None:
    config = {"bootstrap.servers": kafka.bootstrap, "group.id": "g", prop: value}
    with pytest.raises(KafkaConfigError) as raised:
        NativePartitionReader(config, "any", 0, OFFSET_END)
    line = str(raised.value)
    assert "\n" not in line and named in line and "fix or remove it" in line


def test_a_secret_refused_is_not_shown(kafka) -> None:
    config = {"bootstrap.servers": kafka.bootstrap, "group.id": "g", "ssl.key.password": "hunter2-secret"}
    config |= {"security.protocol": "SSL", "ssl.key.pem": "not a key hunter2-secret"}
    with pytest.raises(KafkaConfigError) as raised:
        NativePartitionReader(config, "any", 0, OFFSET_END)
    assert "hunter2-secret" not in str(raised.value) and "\n" not in str(raised.value)


def test_a_consumer_without_a_group_is_refused_in_one_line(kafka) -> None:
    with pytest.raises(KafkaConfigError, match=r"group.id is not set"):
        NativePartitionReader({"bootstrap.servers": kafka.bootstrap}, "any", 0, OFFSET_END)


def test_a_callback_the_reader_does_not_call_is_refused_in_one_line(kafka) -> None:
    with pytest.raises(KafkaConfigError, match=r"stats_cb: the native reader does not call it: remove it"):
        NativePartitionReader({"bootstrap.servers": kafka.bootstrap, "stats_cb": print}, "any", 0, OFFSET_END)


def test_without_the_extension_the_reader_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "waxstreams_native", None)  # import fails as if never built
    monkeypatch.setattr(kafka_native, "_module", None)
    monkeypatch.setattr(kafka_native, "_unavailable", None)
    reason = kafka_native.unavailable()
    assert reason is not None and "\n" not in reason and "make install" in reason and "cargo" in reason
    with pytest.raises(kafka_native.NativeReaderUnavailable):
        NativePartitionReader({}, "any", 0, OFFSET_END)


def test_over_the_secured_listeners(secured_kafka) -> None:
    """Plain records here (the transactions' gaps are the plaintext test's): this is about the sign-in."""
    topic = _topic(secured_kafka.setup_bootstrap)
    expected = [(None if i % 7 == 0 else f"k{i}".encode(), f"v{i}".encode(), BASE_TS + i) for i in range(300)]
    _produce(secured_kafka.setup_bootstrap, topic, expected)

    native = read_native(secured_kafka.client_config(), topic, OFFSET_BEGINNING, batch=1000)

    assert [(k, v, ts) for _, k, v, ts in native] == expected
    assert native == read_confluent({"bootstrap.servers": secured_kafka.setup_bootstrap}, topic, OFFSET_BEGINNING)


def test_tokens_made_in_python_are_refreshed_while_reading(secured_broker, tmp_path: Path, monkeypatch) -> None:
    """The token listener ends every session after 3 s; tokens last 6 s; records arrive over 12 s:
    the reader reads them all only if our token callback (oauth_cb) is called again in time."""
    broker = secured_broker("oauthbearer")
    token_log = tmp_path / "tokens.log"
    monkeypatch.setenv("TOKEN_LOG", str(token_log))
    topic = _topic(broker.setup_bootstrap)
    settings = KafkaSettings.from_env(broker.token_client_env("tests.support.oauth_tokens:short_lived"))
    config = _consumer_config({"bootstrap.servers": ",".join(settings.brokers), **settings.client.client_config()})
    values = [f"paced-{i}".encode() for i in range(240)]

    def paced() -> None:
        producer = Producer({"bootstrap.servers": broker.setup_bootstrap})
        for value in values:
            producer.produce(topic, value=value, partition=0)
            producer.poll(0)
            time.sleep(0.05)  # the pace of the traffic, not a wait for a condition
        producer.flush(30)

    feeder = threading.Thread(target=paced)
    feeder.start()
    read: list[bytes] = []
    with NativePartitionReader(config, topic, 0, OFFSET_BEGINNING, client=settings.client) as reader:
        deadline = time.monotonic() + 60
        while len(read) < len(values) and time.monotonic() < deadline:
            read += reader.read(500, 0.5).values.to_list()
    feeder.join()
    assert read == values
    made = [float(line.split()[0]) for line in token_log.read_text().splitlines()]
    assert len(made) >= 2 and max(made) - min(made) > oauth_tokens.SHORT_LIFETIME_S / 2, "no token refreshed"


def test_a_refused_login_is_explained_through_error_cb(secured_broker) -> None:
    broker = secured_broker("sasl_ssl_scram")
    config = {**broker.client_config(), "sasl.password": "not-the-password"}
    settings = KafkaSettings.from_env(broker.client_env())
    problems = ClientProblems()
    explained = None
    with NativePartitionReader(_consumer_config({**config, **problems.config()}), "any", 0, OFFSET_END) as reader:
        deadline = time.monotonic() + 30
        while explained is None and time.monotonic() < deadline:
            reader.read(100, 0.2)
            explained = problems.explain([broker.bootstrap], settings.client)
    assert explained is not None and "SASL authentication failed" in explained, problems.reports[:5]
    assert any(code == KafkaError._AUTHENTICATION for code, _ in problems.reports)  # from error_cb
    assert "not-the-password" not in " ".join(text for _, text in problems.reports)


def test_librdkafka_logs_reach_the_logger_as_confluent_kafka_writes_them(secured_broker) -> None:
    """A plaintext client on the mTLS listener: the listener closes it; only the log says how."""
    broker = secured_broker("mtls")
    config = {k: v for k, v in broker.client_config().items() if not k.startswith("ssl.")}
    config["security.protocol"] = "PLAINTEXT"
    problems = ClientProblems()
    with NativePartitionReader(_consumer_config({**config, **problems.config()}), "any", 0, OFFSET_END) as reader:
        deadline = time.monotonic() + 30
        while not any(code is None for code, _ in problems.reports) and time.monotonic() < deadline:
            reader.read(100, 0.2)
    logged = [text for code, text in problems.reports if code is None]
    assert logged and logged[0].startswith("FAIL [rdkafka#consumer-") and "Disconnected" in logged[0], logged[:3]
