"""Both jobs and the producers against secured brokers: SASL_SSL/SCRAM-SHA-512, mTLS, OAUTHBEARER.

Each broker's client listener is secured (devstack.kafka.KafkaBroker `security`); the
jobs and the producers get only the KAFKA_* settings a user would set. Topics are made
and results read through the broker's separate PLAINTEXT listener, so the check does
not depend on the code under test. Then the errors a user can cause with these
settings: each is one line on stderr naming the setting and the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from dataflows.settings import KafkaSettings
from devstack.tls import make_ca
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.jobs import FLOWS, ROOT, init_recovery, run_dataflow
from tests.support.oracles import expected_rows, raw_of
from tests.support.runs import check_booking_records

IMPRESSIONS = TrafficShape(count=3000, movies=6, users=30, step_ms=2400, jitter_ms=1500, invalid_fraction=0.02, seed=3)
BOOKINGS = BookingTraffic(count=600, step_ms=500, max_delay_ms=60_000, invalid_fraction=0.02, seed=4)


def impressions_world(broker, s3, tmp_path: Path) -> tuple[dict[str, str], list]:
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "IMPRESSIONS_TOPIC": f"in-{run_id}",
        "DEAD_LETTER_TOPIC": f"dead-{run_id}",
        "LATE_TOPIC": f"late-{run_id}",
    }
    make_topics(broker, *topics.values())
    s3.create_bucket(f"sec-{run_id}")
    env = {
        **broker.client_env(),
        **topics,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"sec-{run_id}",
        "S3_PREFIX": "impressions",
        "MAX_OUT_OF_ORDERNESS_SECONDS": "2",
        "BOUNDED": "true",
    }
    events = list(generate(IMPRESSIONS))
    # Through the secured listener, with the same settings as the job.
    brokers, client = _client(env)
    produce(iter(events), brokers, topics["IMPRESSIONS_TOPIC"], client=client)
    return env, events


def _client(env: dict[str, str]):
    settings = KafkaSettings.from_env(env)
    return ",".join(settings.brokers), settings.client


def assert_no_secret_in(broker, *outputs: str, also: tuple[str, ...] = ()) -> None:
    """None of the broker's client secrets (nor `also`) in what a run printed or wrote."""
    everything = "\n".join(outputs)
    for value in (*broker.secrets(), *also):
        assert value not in everything, "a secret leaked into the output"


def test_movie_impressions_exact_over_the_secured_listener(secured_kafka, s3, tmp_path: Path) -> None:
    env, events = impressions_world(secured_kafka, s3, tmp_path)
    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / "recovery"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_secret_in(secured_kafka, result.stdout, result.stderr)

    rows = read_s3_rows(s3, env["S3_BUCKET"], "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))
    dead_records = read_topic(secured_kafka.setup_bootstrap, env["DEAD_LETTER_TOPIC"])
    dead = [json.loads(v) for _, v in dead_records]
    assert Counter(raw_of(d) for d in dead) == Counter(e.value for e in events if e.kind == "invalid")
    assert_no_secret_in(secured_kafka, *(v.decode(errors="replace") for _, v in dead_records))


def booking_world(broker, **extra_env: str) -> tuple[dict[str, str], list]:
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "CREATED_TOPIC": f"created-{run_id}",
        "EVENTS_TOPIC": f"events-{run_id}",
        "ALERTS_TOPIC": f"alerts-{run_id}",
        "UNMATCHED_TOPIC": f"unmatched-{run_id}",
        "DEAD_LETTER_TOPIC": f"dead-{run_id}",
    }
    make_topics(broker, *topics.values())
    env = {**broker.client_env(), **topics, "BOOKING_TIMEOUT_SECONDS": "300", "BOUNDED": "true", **extra_env}
    messages = generate_bookings(BOOKINGS)
    brokers, client = _client(env)
    produce_messages(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]), brokers, client=client)
    return env, messages


def check_bookings(broker, env: dict[str, str], messages: list) -> None:
    plain = broker.setup_bootstrap
    check_booking_records(
        read_topic(plain, env["ALERTS_TOPIC"]),
        read_topic(plain, env["UNMATCHED_TOPIC"]),
        read_topic(plain, env["DEAD_LETTER_TOPIC"]),
        messages,
        allow_identical_repeats=False,
    )


def test_booking_correlation_exact_over_the_secured_listener(secured_kafka, tmp_path: Path) -> None:
    env, messages = booking_world(secured_kafka)
    result = run_dataflow(FLOWS["booking-correlation"], env, recovery=init_recovery(tmp_path / "recovery"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_secret_in(secured_kafka, result.stdout, result.stderr)
    check_bookings(secured_kafka, env, messages)


def test_producer_cli_takes_the_jobs_settings(secured_broker) -> None:
    broker = secured_broker("sasl_ssl_scram")
    topics = [f"created-cli-{uuid.uuid4().hex[:6]}", f"events-cli-{uuid.uuid4().hex[:6]}"]
    make_topics(broker, *topics)
    argv = [sys.executable, "-m", "producers.bookings", "--count", "50", "--rate", "0", "--seed", "8"]
    argv += ["--created-topic", topics[0], "--events-topic", topics[1]]
    env = {**_base_env(), **broker.client_env()}
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    # The count does not depend on the event-time start the CLI takes from the clock.
    expected = generate_bookings(BookingTraffic(count=50, seed=8))
    sent = Counter(m.side for m in expected)
    assert len(read_topic(broker.setup_bootstrap, topics[0])) == sent["created"]
    assert len(read_topic(broker.setup_bootstrap, topics[1])) == sent["event"]

    wrong = subprocess.run(
        argv,
        env={**env, "KAFKA_SASL_PASSWORD": "not-the-password"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert_no_secret_in(broker, result.stdout, result.stderr, wrong.stdout, wrong.stderr, also=("not-the-password",))
    [line] = wrong.stderr.strip().splitlines()
    assert line.startswith("python -m producers.bookings: ")
    assert "SASL authentication failed" in line and "KAFKA_SASL_PASSWORD" in line


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}


# -- misconfiguration: one line, the setting, the reason ------------------------------------


def _one_line_failure(target: str, env: dict[str, str], tmp_path: Path) -> str:
    """The run fails with one line on stderr, and no secret of `env` anywhere in its output."""
    recovery = init_recovery(tmp_path / f"recovery-{uuid.uuid4().hex[:6]}")
    result = run_dataflow(target, env, recovery=recovery, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for name, value in env.items():
        if name.endswith("PASSWORD"):
            assert value not in result.stdout + result.stderr, f"{name} leaked"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def scram_env(secured_broker, s3, unique) -> dict[str, str]:
    broker = secured_broker("sasl_ssl_scram")
    topics = {
        "IMPRESSIONS_TOPIC": f"in-{unique}",
        "DEAD_LETTER_TOPIC": f"dead-{unique}",
        "LATE_TOPIC": f"late-{unique}",
    }
    make_topics(broker, *topics.values())
    s3.create_bucket(f"mis-{unique}")
    return {**broker.client_env(), **topics, "S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": f"mis-{unique}"}


@pytest.mark.parametrize("job", ["movie-impressions", "booking-correlation"])
def test_wrong_password_is_one_line(scram_env, job: str, tmp_path: Path) -> None:
    env = {**scram_env, "KAFKA_SASL_PASSWORD": "wrong-" + uuid.uuid4().hex}
    if job == "booking-correlation":
        env |= {"CREATED_TOPIC": env["IMPRESSIONS_TOPIC"], "EVENTS_TOPIC": env["LATE_TOPIC"]}
    line = _one_line_failure(FLOWS[job], env, tmp_path)
    assert line.startswith(f"{job.replace('-', '_')}: Kafka at {env['KAFKA_BROKERS']}: SASL authentication failed (")
    assert "invalid credentials" in line and "KAFKA_SASL_PASSWORD" in line


def test_unknown_ca_is_one_line(scram_env, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    line = _one_line_failure(
        FLOWS["movie-impressions"], {**scram_env, "KAFKA_SSL_CA_LOCATION": str(other_ca)}, tmp_path
    )
    assert "TLS certificate verify failed" in line and "certificate verify failed" in line
    assert "set KAFKA_SSL_CA_LOCATION to the CA that signed the broker's certificate" in line


def test_protocol_typo_is_one_line(scram_env, tmp_path: Path) -> None:
    line = _one_line_failure(FLOWS["movie-impressions"], {**scram_env, "KAFKA_SECURITY_PROTOCOL": "SASL_SLL"}, tmp_path)
    assert line == (
        "movie_impressions: KAFKA_SECURITY_PROTOCOL='SASL_SLL' is not a security protocol: "
        "use one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )


def test_missing_ca_file_is_one_line(scram_env, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    line = _one_line_failure(FLOWS["movie-impressions"], {**scram_env, "KAFKA_SSL_CA_LOCATION": str(missing)}, tmp_path)
    assert line.startswith(f"movie_impressions: KAFKA_SSL_CA_LOCATION={missing} does not exist: point it at the CA")


def test_plaintext_client_on_the_tls_listener_is_one_line(scram_env, tmp_path: Path) -> None:
    env = {k: v for k, v in scram_env.items() if not k.startswith(("KAFKA_S",))}  # only KAFKA_BROKERS left
    line = _one_line_failure(FLOWS["movie-impressions"], env, tmp_path)
    assert "closed the connection at the first request (PLAINTEXT client)" in line
    assert "set KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL" in line


def test_missing_client_certificate_is_one_line(secured_broker, s3, unique, tmp_path: Path) -> None:
    broker = secured_broker("mtls")
    make_topics(broker, f"in-{unique}", f"dead-{unique}", f"late-{unique}")
    env = {
        **{k: v for k, v in broker.client_env().items() if not k.startswith(("KAFKA_SSL_CERT", "KAFKA_SSL_KEY"))},
        "IMPRESSIONS_TOPIC": f"in-{unique}",
        "DEAD_LETTER_TOPIC": f"dead-{unique}",
        "LATE_TOPIC": f"late-{unique}",
        "S3_ENDPOINT_URL": s3.endpoint_url,
    }
    line = _one_line_failure(FLOWS["movie-impressions"], env, tmp_path)
    assert "refused the TLS handshake" in line and "KAFKA_SSL_CERTIFICATE_LOCATION" in line


def test_wrong_key_password_is_one_line(secured_broker, s3, unique, tmp_path: Path) -> None:
    broker = secured_broker("mtls")
    make_topics(broker, f"in-{unique}", f"dead-{unique}", f"late-{unique}")
    env = {
        **broker.client_env(),
        "KAFKA_SSL_KEY_PASSWORD": "wrong-" + uuid.uuid4().hex,
        "IMPRESSIONS_TOPIC": f"in-{unique}",
        "DEAD_LETTER_TOPIC": f"dead-{unique}",
        "LATE_TOPIC": f"late-{unique}",
        "S3_ENDPOINT_URL": s3.endpoint_url,
    }
    line = _one_line_failure(FLOWS["movie-impressions"], env, tmp_path)
    assert "cannot be read with KAFKA_SSL_KEY_PASSWORD" in line
    assert_no_secret_in(broker, line)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"KAFKA_PROPERTY_SSL__ENDPOINT__IDENTIFICATON__ALGORITHM": "https"}, "KAFKA_PROPERTY_SSL__ENDPOINT__IDENTIFICATON__ALGORITHM sets ssl.endpoint.identificaton.algorithm, which librdkafka does not know"),
        ({"KAFKA_PROPERTIES": "socket.timeout.ms=soon"}, "KAFKA_PROPERTIES (socket.timeout.ms): librdkafka refused it"),
        ({"KAFKA_PROPERTIES": "sasl.password=other"}, "KAFKA_SASL_PASSWORD and KAFKA_PROPERTIES both set sasl.password differently: keep one"),
        ({"KAFKA_PROPERTIES": "group.id=mine"}, "KAFKA_PROPERTIES sets group.id: set CONSUMER_GROUP instead"),
        ({"KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, "KAFKA_SASL_MECHANISM='SCRAM-SHA-1' is not a SASL mechanism"),
    ],
)  # fmt: skip
def test_property_mistakes_are_one_line(scram_env, tmp_path: Path, override: dict[str, str], expected: str) -> None:
    line = _one_line_failure(FLOWS["movie-impressions"], {**scram_env, **override}, tmp_path)
    assert line.startswith(f"movie_impressions: {expected}")
    assert scram_env["KAFKA_SASL_PASSWORD"] not in line and "other" not in line.split("differently")[-1]
