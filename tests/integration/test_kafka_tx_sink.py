"""The transactional Kafka sink against a real broker: crash sequences, zombies, outages, limits.

A "crash" leaves the partition object as it was, its producer alive: a zombie, as a
process paused or partitioned away would be. What counts is what a read_committed
reader of the output topic sees.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.transports.contract import OutputRecord
from connectors.transports.kafka import KafkaTransport
from connectors.transports.kafka_control import RECORD_OVERHEAD_BYTES, KafkaSinkError, control_topic
from connectors.transports.kafka_sink import KafkaTxSink
from connectors.transports.kafka_start_position import StartPosition
from connectors.transports.kafka_tx_retry import EpochCopy
from devstack.kafka import KafkaBroker
from devstack.processes import free_port
from tests.support.data import make_topics
from tests.support.jobs import ROOT

NAMESPACE = "20250102T030405Z-abc123"  # a run namespace as the recovery store makes them


def records(*units: str) -> list[OutputRecord]:
    return [OutputRecord(unit, unit.encode(), f"value of {unit}".encode()) for unit in units]


def read(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[bytes]:
    """Every record key of the topic as a reader with `isolation` sees it, to the log's current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "isolation.level": "read_uncommitted"})
        ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        probe.close()
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        keys: list[bytes] = []
        for _ in range(120):
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    keys.append(msg.key() or b"")
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] for tp in positions if ends[tp.partition] > 0):
                return keys
        msg = f"could not read {topic} to its end"
        raise AssertionError(msg)
    finally:
        consumer.close()


def units_seen(bootstrap: str, topic: str, isolation: str = "read_committed") -> Counter[str]:
    return Counter(key.decode() for key in read(bootstrap, topic, isolation))


@pytest.fixture
def topic(kafka: KafkaBroker, unique: str) -> str:
    name = f"tx-out-{unique}"
    make_topics(kafka, name, partitions=2)
    return name


@pytest.fixture
def zombies() -> Iterator[list[Any]]:
    """Crashed partitions, kept alive until the test ends (their producers are the zombies)."""
    kept: list[Any] = []
    yield kept
    kept.clear()


def sink_for(kafka: KafkaBroker, topic: str, **config: str) -> KafkaTxSink:
    return KafkaTxSink([kafka.bootstrap], topic, config, job="test", namespace=NAMESPACE, partitions=1)


def test_a_b_c_each_unit_once(kafka: KafkaBroker, topic: str, zombies: list[Any]) -> None:
    """The issue's sequence: A (no state) commits U, its snapshot is never stored; B (no state) writes
    another unit and its snapshot is stored; C resumes from B's and writes U again."""
    sink = sink_for(kafka, topic)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("U"))
    a.snapshot()  # never stored
    zombies.append(a)
    b = sink.build_part("out", "p00", None)
    b.write_batch(records("V"))
    stored = b.snapshot()
    zombies.append(b)
    c = sink.build_part("out", "p00", stored)
    c.write_batch(records("U", "W"))
    c.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({"U": 1, "V": 1, "W": 1})


def test_a_b_c_d_each_unit_once(kafka: KafkaBroker, topic: str, zombies: list[Any]) -> None:
    """As above, but C too dies before it reaches U, after storing a snapshot: D resumes from C's and
    must still know U (the fence rides in every snapshot until the replay passes it)."""
    sink = sink_for(kafka, topic)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("U"))
    a.snapshot()
    zombies.append(a)
    b = sink.build_part("out", "p00", None)
    b.write_batch(records("V"))
    stored_b = b.snapshot()
    zombies.append(b)
    c = sink.build_part("out", "p00", stored_b)
    c.write_batch(records("W"))
    stored_c = c.snapshot()
    zombies.append(c)
    assert "U" in stored_c["fence"]
    d = sink.build_part("out", "p00", stored_c)
    d.write_batch(records("U", "X"))
    final = d.snapshot()
    d.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({"U": 1, "V": 1, "W": 1, "X": 1})
    assert final["fence"] == set(), "a unit the replay passed stays in the fence"


def test_commits_past_a_stored_snapshot_are_not_repeated(kafka: KafkaBroker, topic: str, zombies: list[Any]) -> None:
    """Two epochs committed past the stored snapshot, the replay cut into other epochs."""
    sink = sink_for(kafka, topic)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("u1", "u2"))
    stored = a.snapshot()
    a.write_batch(records("u3", "u4"))
    a.snapshot()
    a.write_batch(records("u5"))
    a.snapshot()
    zombies.append(a)
    b = sink.build_part("out", "p00", stored)
    b.write_batch(records("u3"))
    b.snapshot()
    b.write_batch(records("u4", "u5", "u6"))
    b.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({f"u{i}": 1 for i in range(1, 7)})


class Crash(Exception):
    """The process dies here."""


class DiesAtCommit:
    """A producer whose process dies as it is about to commit: the transaction, manifest
    included, is in the log and open."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __len__(self) -> int:
        return len(self._real)

    def commit_transaction(self, *args: Any) -> None:
        raise Crash


def test_an_aborted_transaction_is_invisible_to_read_committed(
    kafka: KafkaBroker, topic: str, zombies: list[Any]
) -> None:
    sink = sink_for(kafka, topic)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("u1"))
    stored = a.snapshot()
    a.write_batch(records("u2", "u3"))
    a._producer = DiesAtCommit(a._producer)
    with pytest.raises(Crash):
        a.snapshot()
    zombies.append(a)  # the restart's init_transactions aborts its transaction, manifest and all
    b = sink.build_part("out", "p00", stored)
    assert not b._fence, "an aborted manifest fenced units"
    b.write_batch(records("u2", "u3"))
    b.close()
    assert units_seen(kafka.bootstrap, topic, "read_uncommitted") == Counter({"u1": 1, "u2": 2, "u3": 2})
    assert units_seen(kafka.bootstrap, topic) == Counter({"u1": 1, "u2": 1, "u3": 1})


def test_a_zombie_is_fenced_with_one_line(
    kafka: KafkaBroker, topic: str, caplog: pytest.LogCaptureFixture, zombies: list[Any]
) -> None:
    sink = sink_for(kafka, topic)
    old = sink.build_part("out", "p00", None)
    old.write_batch(records("u1"))
    stored = old.snapshot()
    zombies.append(old)
    new = sink.build_part("out", "p00", stored)  # same transactional.id: the old producer is fenced
    caplog.set_level(logging.ERROR)
    with pytest.raises(KafkaSinkError) as refused:
        old.write_batch(records("u2"))
        old.snapshot()
    line = str(refused.value)
    assert "\n" not in line
    assert f"Kafka output topic {topic}" in line
    assert "took over" in line and "transactional.id waxstreams.test.out." in line
    assert line in caplog.text, "the refusal was not logged before raising"
    new.write_batch(records("u2"))
    new.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({"u1": 1, "u2": 1})


def test_an_epoch_outlasting_half_the_transaction_timeout_commits_within_it(
    kafka: KafkaBroker, topic: str, zombies: list[Any]
) -> None:
    sink = sink_for(kafka, topic, **{"transaction.timeout.ms": "10000"})
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("u1"))
    stored = a.snapshot()
    a.write_batch(records("u2"))
    a._txn_started -= 6.0  # the epoch has lasted 6 s of the transaction's 10
    a.write_batch(records("u3"))
    assert units_seen(kafka.bootstrap, topic) == Counter({"u1": 1, "u2": 1}), "u2 not committed within the epoch"
    zombies.append(a)  # dies before its snapshot
    b = sink.build_part("out", "p00", stored)
    b.write_batch(records("u2", "u3"))
    b.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({"u1": 1, "u2": 1, "u3": 1})


def test_manifests_of_many_units_are_cut_and_read_back(kafka: KafkaBroker, topic: str, zombies: list[Any]) -> None:
    units = [f"input-topic:{i % 7}:{i:012d}/{'x' * 60}" for i in range(20_000)]  # ~1.7 MB of unit ids
    sink = sink_for(kafka, topic)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records(*units))
    a.snapshot()
    zombies.append(a)
    manifests = read(kafka.bootstrap, control_topic(topic))
    assert len(manifests) >= 4, "one manifest record of over 1 MB"
    b = sink.build_part("out", "p00", None)
    assert b._fence.units() == frozenset(units)
    b.write_batch(records(*units, "last"))
    b.close()
    seen = units_seen(kafka.bootstrap, topic)
    assert set(seen.values()) == {1} and len(seen) == len(units) + 1


def test_max_record_bytes_follows_the_topic_and_such_a_record_goes_through(
    kafka: KafkaBroker, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    small = f"tx-small-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka.setup_bootstrap})
    admin.create_topics([NewTopic(small, 1, 1, config={"max.message.bytes": "20000"})])[small].result(30)
    transport = KafkaTransport([kafka.bootstrap], "g", False, 100, StartPosition("earliest"), None)
    limit = transport.max_record_bytes(small)
    assert limit == 20_000 - RECORD_OVERHEAD_BYTES
    default = f"tx-default-{unique}"
    make_topics(kafka, default, partitions=1)
    assert transport.max_record_bytes(default) == 1_000_000 - RECORD_OVERHEAD_BYTES  # the producer's limit

    sink = KafkaTxSink([kafka.bootstrap], small, job="test", namespace=NAMESPACE, partitions=1)
    part = sink.build_part("out", "p00", None)
    part.write_batch([OutputRecord("fits", b"k", os.urandom(limit - 1))])
    # Many small records: batched, but no batch over the topic's limit.
    part.write_batch([OutputRecord(f"small{i}", b"s", os.urandom(1_000)) for i in range(200)])
    part.snapshot()
    assert units_seen(kafka.bootstrap, small) == Counter({"k": 1, "s": 200})
    caplog.set_level(logging.ERROR)
    with pytest.raises(KafkaSinkError, match=f"Kafka output topic {small}: .*max.message.bytes"):
        part.write_batch([OutputRecord("too-big", b"k", os.urandom(25_000))])
        part.snapshot()


def test_the_transport_routes_keys_through_partitions_in_order(kafka: KafkaBroker, topic: str, tmp_path: Path) -> None:
    transport = KafkaTransport(
        [kafka.bootstrap], "g", True, 100, StartPosition("earliest"), None, job="test", sink_namespace=NAMESPACE
    )
    items = [OutputRecord(f"u{i}", f"key{i % 13}".encode(), json.dumps(i).encode()) for i in range(2_000)]
    flow = Dataflow("route")
    transport.write("out", op.input("in", flow, TestingSource(items, batch_size=150)), topic)
    run_main(flow)
    consumer_keys = read(kafka.bootstrap, topic)
    assert Counter(consumer_keys) == Counter(item.key for item in items)
    # Per key, the order of the input (a key stays in one sink partition and one topic partition).
    seen = _values_by_key(kafka.bootstrap, topic)
    for key, values in seen.items():
        assert values == sorted(values), f"{key!r} reordered"


def _values_by_key(bootstrap: str, topic: str) -> dict[bytes, list[int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}", "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: dict[bytes, list[int]] = {}
    at_end: set[int] = set()
    while len(at_end) < len(partitions):
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is not None:
                at_end.add(msg.partition() or 0)
            else:
                out.setdefault(msg.key() or b"", []).append(json.loads(msg.value() or b"0"))
    consumer.close()
    return out


def test_an_outage_past_message_timeout_stops_the_sink_and_the_resume_is_exact(
    own_broker: KafkaBroker, unique: str, caplog: pytest.LogCaptureFixture, zombies: list[Any]
) -> None:
    topic = f"tx-outage-{unique}"
    make_topics(own_broker, topic, partitions=2)
    # The epochs before and after the outage have librdkafka's default timeouts: a loaded
    # machine must not time them out; only the partition living through the outage is impatient.
    patient = sink_for(own_broker, topic)
    first = patient.build_part("out", "p00", None)
    first.write_batch(records(*(f"u{i}" for i in range(10))))
    stored = first.snapshot()
    zombies.append(first)
    impatient = sink_for(own_broker, topic, **{"message.timeout.ms": "3000", "transaction.timeout.ms": "20000"})
    second = impatient.build_part("out", "p00", stored)
    own_broker.stop()
    caplog.set_level(logging.ERROR)
    with pytest.raises(KafkaSinkError) as refused:
        second.write_batch(records(*(f"u{i}" for i in range(10, 20))))
        second.snapshot()
    line = str(refused.value)
    assert "\n" not in line and f"Kafka output topic {topic}" in line and "message.timeout.ms" in line
    assert line in caplog.text
    zombies.append(second)
    own_broker.start()
    resumed = patient.build_part("out", "p00", stored)
    resumed.write_batch(records(*(f"u{i}" for i in range(10, 20))))
    resumed.close()
    assert units_seen(own_broker.bootstrap, topic) == Counter({f"u{i}": 1 for i in range(20)})


# The broker forgets a transactional id idle this long (production: 7 days), checking every half second.
TXN_ID_EXPIRY = {
    "transactional.id.expiration.ms": "3000",
    "transaction.remove.expired.transaction.cleanup.interval.ms": "500",
}


@pytest.fixture(scope="module")
def forgetful_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Its tests use job names of their own: the same transactional id would fence the other's producer."""
    data = tmp_path_factory.mktemp("kafka")
    broker = KafkaBroker(free_port(), free_port(), data, ROOT / ".cache", extra_settings=TXN_ID_EXPIRY)
    broker.start()
    yield broker
    gc.collect()  # the partitions' producers go while it still answers
    broker.stop(grace=0)


def wait_until_forgotten(bootstrap: str, txid: str, timeout: float = 60.0) -> None:
    """Until the transaction coordinator has written the tombstone of `txid` to its log: it then
    holds no metadata for it (or is removing it, answering CONCURRENT_TRANSACTIONS, which clients retry)."""
    key = struct.pack(">hh", 0, len(txid)) + txid.encode()  # TransactionLogKey v0: version, string
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}", "enable.auto.commit": False})
    try:
        log_topic = "__transaction_state"
        partitions = consumer.list_topics(log_topic, timeout=10).topics[log_topic].partitions
        consumer.assign([TopicPartition(log_topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None and msg.key() == key and msg.value() is None:
                    return
    finally:
        consumer.close()
    msg = f"the broker did not forget {txid} within {timeout:g}s"
    raise AssertionError(msg)


def test_an_output_idle_past_the_brokers_transactional_id_expiry_writes_its_epoch_again(
    forgetful_broker: KafkaBroker, unique: str, caplog: pytest.LogCaptureFixture, zombies: list[Any]
) -> None:
    """An output idle longer than transactional.id.expiration.ms: the coordinator forgets its
    transactional id and refuses the next transaction (INVALID_PRODUCER_ID_MAPPING, abortable).
    The partition aborts it and writes the epoch again, manifest included, in a new one."""
    kafka = forgetful_broker
    topic = f"tx-idle-{unique}"
    make_topics(kafka, topic, partitions=2)
    sink = KafkaTxSink([kafka.bootstrap], topic, job="idle", namespace=NAMESPACE, partitions=1)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("u1", "u2"))
    stored = a.snapshot()
    wait_until_forgotten(kafka.bootstrap, a._txid)
    caplog.set_level(logging.WARNING)
    a.write_batch(records("u3", "u4"))
    a.write_batch(records("u5"))
    a.snapshot()
    rewrites = [r.getMessage() for r in caplog.records if "went abortable" in r.getMessage()]
    assert len(rewrites) == 1 and f"Kafka output topic {topic}" in rewrites[0], caplog.text
    assert units_seen(kafka.bootstrap, topic) == Counter({f"u{i}": 1 for i in range(1, 6)})
    zombies.append(a)  # dies before its snapshot is stored
    b = sink.build_part("out", "p00", stored)
    assert b._fence.units() == {"u3", "u4", "u5"}, "the rewritten transaction's manifest is not read back once"
    b.write_batch(records("u3", "u4", "u5", "u6"))
    b.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({f"u{i}": 1 for i in range(1, 7)})


def test_an_abortable_epoch_too_large_to_keep_stops_the_job_with_one_line_and_the_resume_is_exact(
    forgetful_broker: KafkaBroker, unique: str, caplog: pytest.LogCaptureFixture, zombies: list[Any]
) -> None:
    kafka = forgetful_broker
    topic = f"tx-big-{unique}"
    make_topics(kafka, topic, partitions=2)
    sink = KafkaTxSink([kafka.bootstrap], topic, job="big", namespace=NAMESPACE, partitions=1)
    a = sink.build_part("out", "p00", None)
    a.write_batch(records("u1"))
    stored = a.snapshot()
    a._copy = EpochCopy(limit_bytes=10)  # less than the next epoch's records
    wait_until_forgotten(kafka.bootstrap, a._txid)
    caplog.set_level(logging.WARNING)
    with pytest.raises(KafkaSinkError) as refused:
        a.write_batch(records("u2", "u3"))
        a.snapshot()
    line = str(refused.value)
    assert "\n" not in line and f"Kafka output topic {topic}" in line and "too many to keep" in line
    assert line in caplog.text and "went abortable" not in caplog.text
    with pytest.raises(KafkaSinkError, match="too many to keep"):
        a.close()  # a stopped partition never commits what is left
    zombies.append(a)
    b = sink.build_part("out", "p00", stored)
    b.write_batch(records("u2", "u3"))
    b.close()
    assert units_seen(kafka.bootstrap, topic) == Counter({"u1": 1, "u2": 1, "u3": 1})
