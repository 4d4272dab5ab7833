"""Builders of test inputs."""

from bytewax.connectors.kafka import KafkaSourceMessage


def kafka_message(value: bytes | None, offset: int = 0, partition: int = 0, topic: str = "t") -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=value, topic=topic, offset=offset, partition=partition)
