"""Sending generated traffic to Kafka at a steady rate."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from confluent_kafka import Producer


def produce_messages(
    messages: Iterable[tuple[str, bytes, bytes]], brokers: str, rate: float = 0.0, progress: bool = False
) -> int:
    """Send (topic, key, value) in order; `rate` messages/s (0 = as fast as the broker takes them)."""
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
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
        producer.poll(0)
        sent += 1
        if progress and time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            print(f"produced {sent} messages ({sent / (last_report - started):.0f}/s)", file=sys.stderr)
    remaining = producer.flush(60)
    if remaining:
        msg = f"{remaining} messages were not acknowledged by Kafka at {brokers}"
        raise RuntimeError(msg)
    return sent
