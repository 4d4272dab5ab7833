"""Which Kafka errors pass (a leader move, a coordinator still loading), and broker queries retried through them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException

from connectors.retry import RetryPolicy, retry
from connectors.transports.kafka_startup_check import KafkaUnavailable

T = TypeVar("T")

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


def _refused(exc: Exception) -> str | None:
    """A refusal retrying cannot cure (no such partition, not authorized): at once, as it is."""
    return None if isinstance(exc, KafkaException) and transient(exc) else f"Kafka refused the query ({exc})"


_BROKER_QUERY = RetryPolicy(
    service="Kafka",
    retry_on=(KafkaException,),
    error=KafkaUnavailable,
    give_up_after=_BROKER_QUERY_S,
    fix="check KAFKA_BROKERS, the brokers' health and the ACLs",
    on_stop="",  # the caller words the stop (or carries on: a resume without the log start)
    incurable=_refused,
    first_delay=0.5,
    max_delay=2.0,
)


def query(call: Callable[[], T], what: str, **timing: Callable) -> T:
    """A broker query at start, retried through passing errors (leader moves, a slow coordinator);
    KafkaUnavailable, naming the fix, once retrying cannot help. `timing`: retry's clock and sleep."""
    return retry(call, what, _BROKER_QUERY, **timing)
