"""The Kafka sink's rewrite of an abortable transaction: which errors, which failure counts, the kept copy, the loop."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from connectors.transports.kafka_control import KafkaSinkError
from connectors.transports.kafka_tx_retry import Abortable, EpochCopy, abortable, guarded, rewrite_line, worse

PURGED = KafkaError(KafkaError._PURGE_QUEUE)
UNMAPPED = KafkaError(KafkaError.INVALID_PRODUCER_ID_MAPPING, "Failed to add partition(s)", txn_requires_abort=True)
FENCED = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UNMAPPED, True),  # the coordinator forgot the transactional id
        (KafkaError(KafkaError._FAIL, "commit failed", txn_requires_abort=True), True),
        (PURGED, True),  # a record of the abortable transaction, purged
        (KafkaError(KafkaError._PURGE_INFLIGHT), True),
        (KafkaError(KafkaError._STATE), True),  # produce() while the transaction is abortable
        (FENCED, False),
        (KafkaError(KafkaError._STATE, "fatal", fatal=True), False),
        (KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "no", fatal=True), False),
        (TIMED_OUT, False),  # the broker did not take it: an outage, not the transaction
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), False),
        (KafkaError(KafkaError._TRANSPORT), False),
    ],
)
def test_which_errors_write_the_epoch_again(error: KafkaError, expected: bool) -> None:
    assert abortable(error) is expected


def test_the_failure_acted_on_is_the_first_unless_a_later_one_is_not_abortable() -> None:
    assert worse(None, PURGED) is PURGED
    assert worse(PURGED, UNMAPPED) is PURGED
    assert worse(PURGED, FENCED) is FENCED  # purged records first, then the fence: the job stops
    assert worse(TIMED_OUT, PURGED) is TIMED_OUT
    assert worse(TIMED_OUT, FENCED) is TIMED_OUT


def test_the_copy_keeps_records_in_order_and_counts_attempts_per_epoch() -> None:
    copy = EpochCopy(limit_bytes=100, attempts=3)
    copy.keep([(b"v1", b"k1"), (b"v2", b"k2")])
    copy.keep([(b"v3", b"k1")])
    assert copy.records == [(b"v1", b"k1"), (b"v2", b"k2"), (b"v3", b"k1")]
    assert [copy.next_attempt() for _ in range(4)] == [True, True, False, False]
    assert copy.attempt == 3 and "refused 3 times" in copy.why_not()
    copy.clear()  # committed: the next epoch starts afresh
    assert copy.records == [] and copy.attempt == 1
    copy.keep([(b"v4", b"k4")])
    assert copy.next_attempt() and copy.records == [(b"v4", b"k4")]


def test_an_epoch_over_the_bound_is_not_kept_and_is_not_written_again() -> None:
    copy = EpochCopy(limit_bytes=10, attempts=3)
    copy.keep([(b"12345", b"k")])  # 6 bytes
    assert copy.records == [(b"12345", b"k")]
    copy.keep([(b"12345", b"k"), (b"1", b"k")])  # 12 bytes, then more
    assert copy.records is None
    assert not copy.next_attempt()
    assert "passed 10 bytes" in copy.why_not()
    copy.clear()
    copy.keep([(b"1", b"k")])
    assert copy.records == [(b"1", b"k")]


def test_guarded_rewrites_until_a_rewrite_goes_through() -> None:
    seen: list[str] = []

    def step() -> None:
        raise Abortable(PURGED, "delivering records")

    def rewrite(refused: Abortable) -> None:
        seen.append(refused.when)
        if len(seen) < 3:
            raise Abortable(UNMAPPED, f"rewrite {len(seen)}")

    guarded(step, rewrite)
    assert seen == ["delivering records", "rewrite 1", "rewrite 2"]


def test_guarded_does_not_rewrite_a_step_that_went_through_and_lets_a_stop_through() -> None:
    calls: list[Abortable] = []
    guarded(lambda: None, calls.append)
    assert calls == []

    def stop(refused: Abortable) -> None:
        line = "the one line"
        raise KafkaSinkError(line)

    def step() -> None:
        raise Abortable(PURGED, "producing")

    with pytest.raises(KafkaSinkError, match="the one line"):
        guarded(step, stop)


def test_the_warning_is_one_line_naming_topic_partition_cause_and_attempt() -> None:
    copy = EpochCopy(attempts=3)
    copy.keep([(b"v", b"k")] * 5)
    copy.next_attempt()
    line = rewrite_line("late-x", "p03", "delivering records", PURGED, copy)
    assert "\n" not in line
    assert line.startswith("Kafka output topic late-x, sink partition p03: ")
    assert "(Local: Purged in queue)" in line and "5 record(s)" in line and "attempt 2 of 3" in line
    assert "transactional.id.expiration.ms" in line
