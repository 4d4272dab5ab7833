"""Booking correlation end to end through the real broker, as a user runs it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from producers.bookings import BookingTraffic, GeneratedBooking, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.support.data import make_topics, read_topic
from tests.support.jobs import FLOWS, Job, init_recovery, run_dataflow, wait_for
from tests.support.oracles import expected_bookings
from tests.support.runs import check_booking_outputs, newest_snapshot_epoch

TIMEOUT_MS = 300_000
TRAFFIC = BookingTraffic(
    count=10_000,
    step_ms=200,
    max_delay_ms=120_000,
    event_first_fraction=0.3,
    missing_fraction=0.08,
    duplicate_fraction=0.05,
    invalid_fraction=0.02,
    seed=11,
)


@pytest.fixture(scope="module")
def bookings(kafka) -> tuple[dict[str, str], list[GeneratedBooking]]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-{suffix}", "EVENTS_TOPIC": f"events-{suffix}"}
    make_topics(kafka, *topics.values(), partitions=3)
    messages = generate_bookings(TRAFFIC)
    produce_messages(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]), kafka.bootstrap)
    return topics, messages


def output_env(kafka, run_id: str) -> dict[str, str]:
    env = {
        "ALERTS_TOPIC": f"alerts-{run_id}",
        "UNMATCHED_TOPIC": f"unmatched-{run_id}",
        "DEAD_LETTER_TOPIC": f"dead-{run_id}",
    }
    make_topics(kafka, *env.values())
    return {**env, "KAFKA_BROKERS": kafka.bootstrap, "BOOKING_TIMEOUT_SECONDS": str(TIMEOUT_MS // 1000)}


def test_traffic_has_every_case(bookings) -> None:
    _, messages = bookings
    alerts, unmatched, invalid = expected_bookings(messages)
    ids = {m.booking_id for m in messages if m.kind == "valid"}
    assert len(ids) >= 10_000 and len(alerts) > 8_000
    assert {"created", "event"} == set(unmatched.values())
    assert sum(m.kind == "duplicate" for m in messages) > 300 and sum(invalid.values()) > 100
    assert sum(1 for a in alerts.values() if a["gapMs"] < 0) > 2000  # event first, in event time too


@pytest.mark.parametrize("workers", [1, 2])
def test_alerts_unmatched_and_dead_letters_equal_the_oracle(kafka, bookings, tmp_path: Path, workers: int) -> None:
    topics, messages = bookings
    env = {**topics, **output_env(kafka, f"w{workers}-{uuid.uuid4().hex[:6]}"), "BOUNDED": "true"}
    result = run_dataflow(
        FLOWS["booking-correlation"], env, workers=workers, recovery=init_recovery(tmp_path / "recovery")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)


def test_kill_and_resume_from_the_recovery_store_keeps_every_alert(kafka, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-k{suffix}", "EVENTS_TOPIC": f"events-k{suffix}"}
    make_topics(kafka, *topics.values(), partitions=2)
    messages = generate_bookings(BookingTraffic(count=4000, step_ms=200, seed=5, invalid_fraction=0.01))
    half = len(messages) // 2
    produce_messages(messages_for(messages[:half], topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]), kafka.bootstrap)
    env = {**topics, **output_env(kafka, f"kill-{suffix}")}
    recovery = init_recovery(tmp_path / "recovery")

    # First run follows the topics (not bounded) and is killed with SIGKILL once alerts flow.
    job = Job(FLOWS["booking-correlation"], {**env, "BOUNDED": "false"}, tmp_path / "run-1.log", recovery=recovery)
    try:
        wait_for(lambda: len(read_topic(kafka.bootstrap, env["ALERTS_TOPIC"])) >= 500, 120, "alerts", job)
        stored = newest_snapshot_epoch(recovery)
        wait_for(lambda: newest_snapshot_epoch(recovery) > stored, 60, "a snapshot after the alerts", job)
    finally:
        job.kill()
    produce_messages(messages_for(messages[half:], topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]), kafka.bootstrap)

    result = run_dataflow(FLOWS["booking-correlation"], {**env, "BOUNDED": "true"}, recovery=recovery)
    assert result.returncode == 0, result.stderr[-3000:]
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)
