"""Credentials never show up in logs, error messages or dead-letter records."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from producers.movie_impressions import TrafficShape, generate, produce
from tests.chaos import FlakyProxy
from tests.conftest import FLOWS, init_recovery, make_topics, read_topic, run_dataflow

pytestmark = pytest.mark.guarantees


def test_no_output_of_runs_with_failures_contains_a_credential(kafka, s3, tmp_path: Path) -> None:
    credentials = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        # Set but inert against the PLAINTEXT test broker: they still pass through our settings.
        "KAFKA_SASL_USERNAME": "user-" + secrets.token_hex(6),
        "KAFKA_SASL_PASSWORD": secrets.token_urlsafe(20),
    }
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "IMPRESSIONS_TOPIC": f"sec-in-{run_id}",
        "DEAD_LETTER_TOPIC": f"sec-dead-{run_id}",
        "LATE_TOPIC": f"sec-late-{run_id}",
    }
    make_topics(kafka, *topics.values())
    s3.create_bucket(f"sec-{run_id}")
    events = generate(TrafficShape(count=4000, step_ms=3000, invalid_fraction=0.05, late_fraction=0.02, seed=9))
    produce(events, kafka.bootstrap, topics["IMPRESSIONS_TOPIC"])
    env = {
        **credentials,
        **topics,
        "KAFKA_BROKERS": kafka.bootstrap,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"sec-{run_id}",
        "BOUNDED": "true",
    }

    outputs = []
    ok = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    outputs += [ok.stdout, ok.stderr]
    # OUTPUT_FORMAT=delta hands the credentials to delta-rs as storage options: never printed either.
    delta = {**env, "OUTPUT_FORMAT": "delta", "S3_PREFIX": "delta", "DELTA_TABLE_URI": ""}
    ok = run_dataflow(FLOWS["movie-impressions"], delta, recovery=init_recovery(tmp_path / "delta"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    outputs += [ok.stdout, ok.stderr]
    for failing in ({"S3_BUCKET": "no-such-bucket"}, {"KAFKA_BROKERS": "127.0.0.1:1"}, {"WINDOW_MINUTES": "7"}):
        result = run_dataflow(FLOWS["movie-impressions"], {**env, **failing}, timeout=60)
        assert result.returncode != 0
        outputs += [result.stdout, result.stderr]
    proxy = FlakyProxy(s3.port)  # an S3 outage past the retry budget: the job stops with an error
    try:
        proxy.set_mode("refuse")
        result = run_dataflow(
            FLOWS["movie-impressions"],
            {**env, "S3_ENDPOINT_URL": proxy.url, "S3_RETRY_SECONDS": "1"},
            timeout=60,
        )
        assert result.returncode != 0
        outputs += [result.stdout, result.stderr]
    finally:
        proxy.close()
    for topic in (topics["DEAD_LETTER_TOPIC"], topics["LATE_TOPIC"]):
        records = read_topic(kafka.bootstrap, topic)
        assert records
        outputs += [(v or b"").decode(errors="replace") for _, v in records]

    everything = "\n".join(outputs)
    assert "S3 bucket 'no-such-bucket'" in everything and "cannot reach Kafka" in everything  # failures seen
    for name, value in credentials.items():
        assert value not in everything, f"{name} leaked"


def test_no_output_of_secured_runs_contains_a_kafka_secret(secured_broker, s3, tmp_path: Path) -> None:
    """Runs over SASL_SSL/SCRAM and mTLS, good and failing, job and producer: no password in any output."""
    from devstack.tls import make_ca
    from tests.conftest import ROOT

    scram, mtls = secured_broker("sasl_ssl_scram"), secured_broker("mtls")
    wrong_password = secrets.token_urlsafe(20)
    wrong_key_password = secrets.token_urlsafe(20)
    secret_values = {
        "the SCRAM password": scram.client_env()["KAFKA_SASL_PASSWORD"],
        "the client key's password": mtls.client_env()["KAFKA_SSL_KEY_PASSWORD"],
        "a wrong SCRAM password": wrong_password,
        "a wrong key password": wrong_key_password,
        "the broker stores' passwords": scram.pki.store_password if scram.pki else "",
    }
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    outputs = []
    for broker, failing in (
        (scram, [{"KAFKA_SASL_PASSWORD": wrong_password}, {"KAFKA_SSL_CA_LOCATION": str(other_ca)},
                 {"KAFKA_PROPERTIES": f"sasl.password={wrong_password}"}, {"KAFKA_SECURITY_PROTOCOL": "SASL_SLL"}]),
        (mtls, [{"KAFKA_SSL_KEY_PASSWORD": wrong_key_password},
                {"KAFKA_PROPERTIES": f"ssl.key.password={wrong_key_password};no.such.property=1"}]),
    ):  # fmt: skip
        run_id = uuid.uuid4().hex[:8]
        topics = {
            "IMPRESSIONS_TOPIC": f"sec-in-{run_id}",
            "DEAD_LETTER_TOPIC": f"sec-dead-{run_id}",
            "LATE_TOPIC": f"sec-late-{run_id}",
        }
        make_topics(broker, *topics.values())
        s3.create_bucket(f"sec-{run_id}")
        env = {
            **broker.client_env(),
            **topics,
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "S3_BUCKET": f"sec-{run_id}",
            "BOUNDED": "true",
        }
        producer = [sys.executable, "-m", "producers.movie_impressions", "--count", "500", "--rate", "0"]
        producer += ["--invalid-fraction", "0.1", "--topic", topics["IMPRESSIONS_TOPIC"]]
        base = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        for extra in ({}, *failing):
            sent = subprocess.run(
                producer, env={**base, **env, **extra}, cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert (sent.returncode == 0) == (not extra), sent.stderr[-2000:]
            outputs += [sent.stdout, sent.stderr]
        ok = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / f"ok-{run_id}"))
        assert ok.returncode == 0, ok.stderr[-2000:]
        outputs += [ok.stdout, ok.stderr]
        for extra in failing:
            result = run_dataflow(FLOWS["movie-impressions"], {**env, **extra}, timeout=60)
            assert result.returncode != 0
            outputs += [result.stdout, result.stderr]
        dead = read_topic(broker.setup_bootstrap, topics["DEAD_LETTER_TOPIC"])
        assert dead
        outputs += [(v or b"").decode(errors="replace") for _, v in dead]

    everything = "\n".join(outputs)
    assert "SASL authentication failed" in everything and "certificate verify failed" in everything  # failures seen
    assert "cannot be read with KAFKA_SSL_KEY_PASSWORD" in everything
    for name, value in secret_values.items():
        assert value and value not in everything, f"{name} leaked"
