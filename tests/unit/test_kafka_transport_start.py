"""What a Kafka job's start asks the broker: the check's listing serves the flow and the source,
the output record limits are asked by the check's own client, once each, and every client connects fast."""

from __future__ import annotations

import pytest

from connectors.engine import consumer_config
from connectors.transports import kafka, kafka_source
from connectors.transports.kafka import KafkaTransport, partition_names
from connectors.transports.kafka_client import KafkaClientConfig
from connectors.transports.kafka_start_position import EARLIEST
from connectors.transports.kafka_startup_check import CheckedTopics

TOPIC, DEAD, LATE = "impressions", "dead", "late"


def test_partition_names_are_bytewax_kafka_source_names_topic_by_topic() -> None:
    listed = {"a": [0, 1, 2], "b": [1, 0], "c": [5]}
    assert partition_names(["b", "a"], listed) == ["1-b", "0-b", "0-a", "1-a", "2-a"]
    assert partition_names([], listed) == []


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The broker's answers, recorded: the check (its topics, the limits it asked), any limit asked
    on its own, and any other listing."""
    asked: dict[str, list] = {"check": [], "check_limits": [], "limit": [], "listing": []}

    def check_and_describe(brokers, config, topics, limits_of=(), client=None) -> CheckedTopics:
        asked["check"].append(list(topics))
        asked["check_limits"].append(list(limits_of))
        return CheckedTopics({TOPIC: [0, 1], DEAD: [0], LATE: [0]}, {topic: 1_000_000 for topic in limits_of})

    def limit(bootstrap, config, topic) -> int:
        asked["limit"].append(topic)
        return 500_000

    def listing(source) -> list[str]:
        asked["listing"].append(source)
        return ["0-listed", "1-listed"]

    monkeypatch.setattr(kafka, "check_and_describe", check_and_describe)
    monkeypatch.setattr(kafka, "topic_max_message_bytes", limit)
    monkeypatch.setattr(kafka, "list_parts_quietly", listing)
    monkeypatch.setattr(kafka_source, "list_parts_quietly", listing)
    return asked


def transport() -> KafkaTransport:
    return KafkaTransport(["127.0.0.1:9"], "group", True, 100, EARLIEST, None)


def test_the_check_listing_serves_the_flow_and_the_source_without_asking_again(broker) -> None:
    t = transport()
    t.check(read=[TOPIC], write=[DEAD, LATE])
    assert t.partitions([TOPIC]) == ["0-impressions", "1-impressions"]
    source = t.source([TOPIC], lambda p, batch, s: ([], s), None)
    assert source.list_parts() == ["0-impressions", "1-impressions"]
    assert broker["check"] == [[TOPIC, DEAD, LATE]] and broker["listing"] == []


def test_without_the_check_the_partitions_are_listed_as_before(broker) -> None:
    t = transport()
    assert t.partitions([TOPIC]) == ["0-listed", "1-listed"]
    assert t.source([TOPIC], lambda p, batch, s: ([], s), None).list_parts() == ["0-listed", "1-listed"]
    assert len(broker["listing"]) == 2


def test_the_check_asks_the_output_limits_itself_and_the_flow_asks_no_more(broker) -> None:
    t = transport()
    t.check(read=[TOPIC], write=[DEAD, LATE])
    assert broker["check_limits"] == [[DEAD, LATE]]  # in the check's own request, not a client each
    expected = kafka.record_limit(1_000_000, kafka.PRODUCER_MESSAGE_MAX_BYTES)
    assert t.max_record_bytes(DEAD) == t.max_record_bytes(LATE) == expected
    assert broker["limit"] == []  # the flow's own questions are answered from the check's


def test_without_the_check_each_limit_is_asked_once(broker) -> None:
    t = transport()
    expected = kafka.record_limit(500_000, kafka.PRODUCER_MESSAGE_MAX_BYTES)
    assert t.max_record_bytes(DEAD) == t.max_record_bytes(DEAD) == expected
    assert broker["limit"] == [DEAD]


def test_every_client_reconnects_fast_unless_the_user_says_otherwise() -> None:
    assert transport().client_config["reconnect.backoff.ms"] == "10"
    own = KafkaClientConfig({"reconnect.backoff.ms": "250", "security.protocol": "SSL"})
    t = KafkaTransport(["127.0.0.1:9"], "group", True, 100, EARLIEST, None, client=own)
    assert t.client_config == {"reconnect.backoff.ms": "250", "security.protocol": "SSL"}


def test_a_bounded_runs_consumers_are_not_held_by_the_broker_waiting_for_more_records() -> None:
    # The end of a partition comes with a fetch that found nothing: the broker holds that one for
    # fetch.wait.max.ms. A run that follows the topic keeps the longer wait (fewer empty fetches).
    def wait_ms(t: KafkaTransport) -> str:
        return consumer_config(t._kafka_source([TOPIC]))["fetch.wait.max.ms"]

    assert wait_ms(transport()) == "10"
    assert wait_ms(KafkaTransport(["127.0.0.1:9"], "group", False, 100, EARLIEST, None)) == "100"
    own = KafkaClientConfig({"fetch.wait.max.ms": "50"})
    assert wait_ms(KafkaTransport(["127.0.0.1:9"], "group", True, 100, EARLIEST, None, client=own)) == "50"
