"""A Kafka sink partition whose transaction went abortable writes the epoch again (kafka_sink.py).

librdkafka makes a transaction *abortable* when an error ends the transaction but not the
producer: the coordinator no longer maps the producer id to the transactional id
(INVALID_PRODUCER_ID_MAPPING: it forgot an id idle longer than the brokers'
transactional.id.expiration.ms, 7 days by default, e.g. a dead-letter output without dead
letters for a week), or another "requires epoch bump" refusal. Its records are then purged
("Purged in queue") and produce() answers "Erroneous state". After abort_transaction() (which
bumps the epoch) the producer can begin a new transaction; what the aborted one held is
invisible to read_committed readers.

So a sink partition keeps its open transaction's records, (value, key) in order, and on such an
error aborts and writes them again, then the manifest (same seq and units), in a new transaction:
at most EPOCH_WRITE_ATTEMPTS transactions per epoch. An epoch whose records pass
KEPT_EPOCH_BYTES is not kept: an abortable error then stops the job with one line, as any
refusal does (the restart replays it). A fatal error (fenced, not authorised) or a record the
broker refused (timed out, too large) is never retried: it stops the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.transports.kafka_control import error_of

EPOCH_WRITE_ATTEMPTS = 3
KEPT_EPOCH_BYTES = 64 * 1024 * 1024  # the copy of one transaction's records (the values stay shared, not copied)

# The codes an abortable transaction shows beside txn_requires_abort(): its records purged, produce() refused.
_ABORTABLE_CODES = {
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
    KafkaError._STATE,
    KafkaError.INVALID_PRODUCER_ID_MAPPING,
}


class Abortable(Exception):
    """The open transaction went abortable `when` doing something: abort it and write the epoch again."""

    def __init__(self, error: KafkaError, when: str) -> None:
        super().__init__(error.str())
        self.error = error
        self.when = when


def guarded(step: Callable[[], None], rewrite: Callable[[Abortable], None]) -> None:
    """`step`, then, while it or a rewrite finds the open transaction abortable, `rewrite` (which
    aborts it and writes the epoch again, or stops the job when it may not)."""
    try:
        step()
        return
    except Abortable as exc:
        refused = exc
    while True:
        try:
            rewrite(refused)
            return
        except Abortable as exc:
            refused = exc


def abortable(error: KafkaError) -> bool:
    """Whether a transaction refused with `error` may be aborted and written again."""
    return not error.fatal() and (error.txn_requires_abort() or error.code() in _ABORTABLE_CODES)


def worse(current: KafkaError | None, new: KafkaError) -> KafkaError:
    """The failure to act on of the one seen so far and a new one: the first, unless it is
    abortable and the new one is not (a fenced producer's or a timed-out record's error
    stops the job even when purged records reported first)."""
    if current is None or (abortable(current) and not abortable(new)):
        return new
    return current


class EpochCopy:
    """The open transaction's records, (value, key) in order, and which write of the epoch it is."""

    def __init__(self, limit_bytes: int = KEPT_EPOCH_BYTES, attempts: int = EPOCH_WRITE_ATTEMPTS) -> None:
        self._limit = limit_bytes
        self.attempts = attempts
        self.records: list[tuple[bytes, bytes]] | None = []  # None: over the limit, not kept
        self._bytes = 0
        self.attempt = 1

    def keep(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for value, key in pairs:
            if self.records is None:
                return
            self._bytes += len(value) + len(key)
            if self._bytes > self._limit:
                self.records = None
            else:
                self.records.append((value, key))

    def next_attempt(self) -> bool:
        """Whether the epoch may be written again (its records kept, attempts left); counts the attempt."""
        if self.records is None or self.attempt >= self.attempts:
            return False
        self.attempt += 1
        return True

    def why_not(self) -> str:
        """Why next_attempt() said no, for the line that stops the job."""
        if self.records is None:
            return f"the epoch's records passed {self._limit} bytes, too many to keep for writing it again"
        return f"the epoch's transaction was refused {self.attempt} times"

    def clear(self) -> None:
        """The epoch committed."""
        self.records = []
        self._bytes = 0
        self.attempt = 1


def rewrite_line(topic: str, part: str, when: str, error: KafkaError, copy: EpochCopy) -> str:
    """The warning for an epoch written again."""
    return (
        f"Kafka output topic {topic}, sink partition {part}: its transaction went abortable while {when} "
        f"({error.str()}): aborted, writing the epoch's {len(copy.records or ())} record(s) again in a new one "
        f"(attempt {copy.attempt} of {copy.attempts}); the brokers forget a transactional id idle longer than "
        "their transactional.id.expiration.ms and refuse its next transaction once like this"
    )


def abort(producer: Producer, timeout_s: float) -> KafkaError | None:
    """Aborts the producer's open transaction, serving its records' delivery reports: None, or
    the error that stopped it (retriable ones are tried again for up to `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.abort_transaction(max(1.0, deadline - time.monotonic()))
            return None
        except KafkaException as exc:
            error = error_of(exc)
            if not error.retriable() or time.monotonic() >= deadline:
                return error
