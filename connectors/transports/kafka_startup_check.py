"""Fail fast at start: the broker answers with these settings and the topics exist."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException

from connectors.errors import WaxstreamsError
from connectors.transports.kafka_client import KafkaClientConfig
from connectors.transports.kafka_control import ask_max_message_bytes
from connectors.transports.kafka_problems import ClientProblems

log = logging.getLogger(__name__)


class KafkaUnavailable(WaxstreamsError, RuntimeError):
    """The broker cannot be reached or a topic is missing; the message names the fix."""


@dataclass(frozen=True)
class CheckedTopics:
    partitions: dict[str, list[int]]  # each topic's, as listed; a topic whose metadata carries an error left out
    max_message_bytes: dict[str, int]  # each topic's max.message.bytes asked for (`limits_of`)


def check_and_describe(
    brokers: list[str],
    client_config: dict[str, Any],
    topics: list[str],
    limits_of: Sequence[str] = (),
    timeout: float = 10.0,
    client: KafkaClientConfig | None = None,
    limits_timeout: float = 30.0,
) -> CheckedTopics:
    """Fail fast at start with one clear line instead of a consumer that waits forever.
    Returns each topic's partitions as the broker listed them (the job reads them from here
    instead of asking again), and the max.message.bytes of each of `limits_of` (output
    topics), asked on the same connection while the topics are listed.

    librdkafka reports why it cannot connect (a refused login, a certificate it cannot
    verify, a listener speaking another protocol) only to `error_cb`: those errors are
    collected while the topics are listed and the first that names a cause ends the
    check at once, as one line naming the setting (`client`'s sources) and the fix."""
    from confluent_kafka.admin import AdminClient

    client = client or KafkaClientConfig()
    problems = ClientProblems()
    admin = AdminClient({"bootstrap.servers": ",".join(brokers), **client_config, **problems.config()})
    # Sent once the client is connected, beside the listing: a client and a round trip less
    # per output topic than a client of its own each (connections are most of a check's time).
    limits = ask_max_message_bytes(admin, limits_of)
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = admin.list_topics(timeout=min(1.0, timeout)).topics
            break
        except KafkaException:
            admin.poll(0)  # serves error_cb and the logger
            explained = problems.explain(brokers, client)
            if explained is not None:
                raise KafkaUnavailable(explained) from None
            if time.monotonic() >= deadline:
                msg = f"cannot reach Kafka at {','.join(brokers)}: start it (make up) or fix KAFKA_BROKERS"
                raise KafkaUnavailable(msg) from None
    missing = [t for t in topics if t not in existing]
    if missing:
        msg = (
            f"Kafka topic(s) {', '.join(missing)} do not exist on {','.join(brokers)}: "
            "create them or fix the topic settings"
        )
        raise KafkaUnavailable(msg)
    log.info("Kafka at %s: connected (%s)", ",".join(brokers), client.masked())
    partitions = {t: list(existing[t].partitions) for t in topics if existing[t].error is None}
    return CheckedTopics(partitions, limits(limits_timeout))
