"""Credentials never show up in logs, error messages or dead-letter records.

The secured brokers' secrets (SCRAM and key passwords, right and wrong) are checked in
every run of tests/e2e/test_secured_kafka.py, good and failing.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import make_topics, read_topic
from tests.support.faults import FlakyProxy
from tests.support.jobs import FLOWS, init_recovery, run_dataflow


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
