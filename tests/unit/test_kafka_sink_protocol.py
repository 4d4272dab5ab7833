"""The Kafka sink's pure pieces: manifests, what a read-back fences, routing, one-line refusals."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError, Producer

from connectors.transports.contract import OutputRecord
from connectors.transports.kafka_client import KafkaConfigError, from_env
from connectors.transports.kafka_control import (
    INIT_STEP,
    Manifest,
    committed_past,
    manifest_values,
    namespace_time_ms,
    parse_manifest,
    record_limit,
    refusal,
    transactional_id,
)
from connectors.transports.kafka_sink import PRODUCER_DEFAULTS, KafkaTxSink, routing_key


def test_a_large_manifest_is_cut_into_records_under_the_piece_size() -> None:
    units = [f"impressions:3:{i:010d}" for i in range(50_000)]
    values = manifest_values("p01", 7, units, piece_bytes=100_000)
    assert len(values) > 1 and all(len(v) < 110_000 for v in values)
    parsed = [parse_manifest(v) for v in values]
    assert {m.seq for m in parsed} == {7}
    assert [u for m in parsed for u in m.units] == units
    assert json.loads(values[0])["part"] == "p01"


def test_a_manifest_without_units_still_says_its_seq() -> None:
    assert [parse_manifest(v) for v in manifest_values("p00", 3, [])] == [Manifest(3, [])]


@pytest.mark.parametrize(
    ("seqs", "next_seq", "fenced", "after"),
    [
        ([], 5, set(), 5),
        ([3, 4], 5, set(), 5),  # at or before the snapshot: the replay starts after them
        ([4, 5, 6], 5, {"u5", "u6"}, 7),
        ([5, 5], 5, {"u5"}, 6),  # a seq repeated by a resume that found nothing to fence
    ],
)
def test_committed_past_fences_only_manifests_at_or_past_the_stored_seq(
    seqs: list[int], next_seq: int, fenced: set[str], after: int
) -> None:
    manifests = [Manifest(seq, [f"u{seq}"]) for seq in seqs]
    assert committed_past(manifests, next_seq) == (fenced, after)


def test_namespace_time_is_read_from_the_recovery_store_namespace() -> None:
    assert namespace_time_ms("20250102T030405Z-abc123") == 1735787045000
    assert namespace_time_ms("") is None
    assert namespace_time_ms("my-namespace") is None


def test_record_limit_is_the_smaller_limit_less_the_framing() -> None:
    assert record_limit(20_000, 1_000_000) == 20_000 - 512
    assert record_limit(10_485_760, 1_000_000) == 1_000_000 - 512


def test_routing_is_stable_and_keeps_a_key_in_one_partition() -> None:
    sink = KafkaTxSink(["127.0.0.1:1"], "alerts", partitions=12)
    parts = sink.list_parts()
    assert parts == sorted(parts) and parts[0] == "p00" and parts[-1] == "p11"
    a = OutputRecord("u1", b"booking-17", b"x")
    b = OutputRecord("u2", b"booking-17", b"y")
    assert routing_key(a) == routing_key(b) == "3561322316"  # crc32: the same in every process and run
    assert sink.part_fn(routing_key(a)) % len(parts) == 3561322316 % 12


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (KafkaError._FENCED, "took over"),
        (KafkaError.PRODUCER_FENCED, "took over"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "grant the job WRITE"),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "transactional ids with prefix"),
        (KafkaError._MSG_TIMED_OUT, "message.timeout.ms"),
        (KafkaError.MSG_SIZE_TOO_LARGE, "max.message.bytes"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "create alerts"),
        (KafkaError.INVALID_TRANSACTION_TIMEOUT, "transaction.max.timeout.ms"),
        (KafkaError._UNSUPPORTED_FEATURE, "do not offer transactions"),
    ],
)
def test_every_refusal_is_one_line_naming_the_output_and_the_fix(code: int, says: str) -> None:
    line = refusal("alerts", transactional_id("bookings", "alerts_out", "ns", "p00"), KafkaError(code), "committing")
    assert "\n" not in line
    assert line.startswith("Kafka output topic alerts: committing failed (")
    assert says in line


def test_a_coordinator_that_never_answers_at_start_is_one_line_about_transactions() -> None:
    line = refusal("alerts", "waxstreams.j.s.n.p00", KafkaError(KafkaError._TIMED_OUT), INIT_STEP)
    assert "no transaction coordinator answered" in line and "transaction.state.log.replication.factor" in line


@pytest.mark.parametrize("prop", ["transactional.id", "enable.idempotence"])
def test_the_sink_s_own_producer_properties_cannot_be_set(prop: str) -> None:
    with pytest.raises(KafkaConfigError, match=f"KAFKA_PROPERTIES sets {prop}: the jobs' Kafka outputs"):
        from_env({"KAFKA_PROPERTIES": f"{prop}=x"})


def test_a_control_partition_not_yet_in_the_clients_metadata_is_asked_again() -> None:
    """A control topic just created (or a broker too busy to answer) is not ready yet, not an error."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from connectors.transports.kafka_control import _watermarks

    answers: list = [
        KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION)),
        KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)),
        (0, 7),
    ]

    class Consumer:
        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert _watermarks(Consumer(), TopicPartition("t.waxstreams-commits", 0), timeout=30) == (0, 7)  # type: ignore[arg-type]
    assert not answers


def test_librdkafka_takes_the_producer_defaults() -> None:
    # enable.sparse.connections is a hidden librdkafka property: an upgrade that drops it
    # would refuse every Kafka output's producer; this says so first.
    Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": "127.0.0.1:9", "transactional.id": "defaults-check"})
