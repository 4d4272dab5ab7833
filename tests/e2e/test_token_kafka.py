"""Both jobs signed in with a token callback (KAFKA_OAUTH_TOKEN_PROVIDER, the path KAFKA_SASL_MECHANISM=AWS_MSK_IAM
takes) on the OAUTHBEARER broker, with tokens that last 6 s: each run outlives its first token.

(The broker's re-authenticating listener, which refuses a token not refreshed in time, is
used in tests/integration/test_kafka_token_callback.py with a producer; a job's start-up
queries there meet librdkafka's re-authentication handshakes every 3 s, see that file.)

Traffic is produced with the same settings (the producers' token path); results are read
through the broker's PLAINTEXT listener, independently of the code under test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from producers.movie_impressions import generate, produce
from tests.e2e.test_secured_kafka import IMPRESSIONS, _client, booking_world
from tests.support import oauth_tokens
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows, raw_of
from tests.support.runs import check_booking_records


def token_env(broker) -> dict[str, str]:
    # KAFKA_PROPERTIES cleared: the broker's own settings would have librdkafka make the tokens.
    env = broker.token_client_env("tests.support.oauth_tokens:short_lived")
    return {**env, "KAFKA_BROKERS": broker.bootstrap, "KAFKA_PROPERTIES": ""}


@pytest.fixture
def token_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tokens.log"
    monkeypatch.setenv("TOKEN_LOG", str(path))  # the provider notes each token made, here and in the job
    return path


def assert_tokens_renewed(token_log: Path, since: float, *outputs: str) -> None:
    """The job made a token more than half a lifetime after its first: one no client could share."""
    made = [float(line.split()[0]) for line in token_log.read_text().splitlines()]
    made = [t for t in made if t >= since]
    assert made and max(made) - min(made) > oauth_tokens.SHORT_LIFETIME_S / 2, "no token renewed during the run"
    assert not any("eyJ" in out for out in outputs), "a token in the output"  # base64 of '{"'


def test_booking_correlation_exact_with_refreshed_tokens(secured_broker, token_log: Path, tmp_path: Path) -> None:
    broker = secured_broker("oauthbearer")
    env, messages = booking_world(broker, **token_env(broker))
    started = time.time()
    result = run_dataflow(FLOWS["booking-correlation"], env, recovery=init_recovery(tmp_path / "recovery"))
    assert result.returncode == 0, result.stderr[-3000:]
    plain = broker.setup_bootstrap
    check_booking_records(
        *(read_topic(plain, env[name]) for name in ("ALERTS_TOPIC", "UNMATCHED_TOPIC", "DEAD_LETTER_TOPIC")),
        messages,
        allow_identical_repeats=False,
    )
    assert_tokens_renewed(token_log, started, result.stdout, result.stderr)


def test_movie_impressions_exact_with_refreshed_tokens(secured_broker, s3, token_log: Path, tmp_path: Path) -> None:
    broker = secured_broker("oauthbearer")
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "IMPRESSIONS_TOPIC": f"in-{run_id}",
        "DEAD_LETTER_TOPIC": f"dead-{run_id}",
        "LATE_TOPIC": f"late-{run_id}",
    }
    make_topics(broker, *topics.values())
    s3.create_bucket(f"tok-{run_id}")
    env = {
        **token_env(broker),
        **topics,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"tok-{run_id}",
        "S3_PREFIX": "impressions",
        "MAX_OUT_OF_ORDERNESS_SECONDS": "2",
        "BOUNDED": "true",
    }
    events = list(generate(IMPRESSIONS))
    brokers, client = _client(env)
    produce(iter(events), brokers, topics["IMPRESSIONS_TOPIC"], client=client)

    started = time.time()
    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / "recovery"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_s3_rows(s3, env["S3_BUCKET"], "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))
    dead = [json.loads(v) for _, v in read_topic(broker.setup_bootstrap, env["DEAD_LETTER_TOPIC"])]
    assert Counter(raw_of(d) for d in dead) == Counter(e.value for e in events if e.kind == "invalid")
    assert_tokens_renewed(token_log, started, result.stdout, result.stderr)
