"""Which Kafka errors pass (a leader move, a coordinator still loading), and broker queries retried through them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException

_BROKER_QUERY_S = 30.0  # watermarks, times, committed offsets at partition start

_TRANSIENT_ERRORS = {
    ConfluentKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    ConfluentKafkaError.COORDINATOR_NOT_AVAILABLE,
    ConfluentKafkaError.NOT_COORDINATOR,
    ConfluentKafkaError.REQUEST_TIMED_OUT,
    ConfluentKafkaError._WAIT_COORD,
    ConfluentKafkaError._TRANSPORT,
    ConfluentKafkaError._TIMED_OUT,
}


def transient(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, ConfluentKafkaError) and (error.retriable() or error.code() in _TRANSIENT_ERRORS)


def query(call: Callable[[], Any]) -> Any:
    """A broker query at start, retried through passing errors (leader moves, a slow coordinator)."""
    deadline = time.monotonic() + _BROKER_QUERY_S
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not transient(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
