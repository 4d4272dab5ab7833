"""Sending generated traffic to Kafka at a steady rate.

The producers read the jobs' Kafka settings (KAFKA_BROKERS, KAFKA_SECURITY_PROTOCOL,
KAFKA_PROPERTIES, ...: connectors/transports/kafka_client.py), so traffic reaches a
secured cluster with the same environment as the jobs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Producer

from connectors.transports.kafka_client import KafkaClientConfig
from connectors.transports.kafka_problems import ClientProblems


class ProduceError(RuntimeError):
    """Kafka refused the producer (login, TLS, protocol) or did not acknowledge; one line."""


def kafka_settings(brokers: str | None, env: Mapping[str, str]) -> tuple[str, KafkaClientConfig]:
    """`--brokers` (else KAFKA_BROKERS) and the client settings of the environment, checked like the jobs'."""
    from dataflows.settings import KafkaSettings

    settings = KafkaSettings.from_env({**env, "KAFKA_BROKERS": brokers} if brokers else env)
    return ",".join(settings.brokers), settings.client


def produce_messages(
    messages: Iterable[tuple[str, bytes, bytes]],
    brokers: str,
    rate: float = 0.0,
    progress: bool = False,
    client: KafkaClientConfig | None = None,
) -> int:
    """Send (topic, key, value) in order; `rate` messages/s (0 = as fast as the broker takes them).

    `client`: security and other librdkafka properties (may hold secrets: never printed)."""
    client = client or KafkaClientConfig()
    problems = ClientProblems()
    config: dict[str, Any] = {
        "bootstrap.servers": brokers,
        "linger.ms": 20,
        "enable.idempotence": True,
        **client.client_config(),
        **problems.config(),
    }
    producer = Producer(config)

    def check() -> None:
        explained = problems.explain(brokers.split(","), client)
        if explained is not None:
            raise ProduceError(explained)

    started = last_report = time.monotonic()
    sent = 0
    for topic, key, value in messages:
        if rate > 0:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # local queue full: let it drain
                producer.poll(0.1)
                check()
        producer.poll(0)
        sent += 1
        if progress and time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            print(f"produced {sent} messages ({sent / (last_report - started):.0f}/s)", file=sys.stderr)
    deadline = time.monotonic() + 60
    while (remaining := producer.flush(1)) and time.monotonic() < deadline:
        check()
    if remaining:
        check()
        msg = f"{remaining} messages were not acknowledged by Kafka at {brokers}: check KAFKA_BROKERS and the topic"
        raise ProduceError(msg)
    return sent
