"""Token callbacks (KAFKA_OAUTH_TOKEN_PROVIDER, the path KAFKA_SASL_MECHANISM=AWS_MSK_IAM takes) against the
OAUTHBEARER broker: the jobs' source and output inside bytewax, and the producers, with tokens made in Python.

The broker's validator is Kafka's unsecured one (unsigned JWTs, devstack.kafka); MSK's own
check of the signed URL cannot run here. Records are made and checked through the
broker's PLAINTEXT listener, independently of the code under test.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from dataflows.settings import KafkaSettings
from producers.kafka_producer import ProduceError, produce_messages
from tests.support import oauth_tokens
from tests.support.data import make_topics, read_topic
from tests.support.jobs import run_dataflow


def _topics(broker, count: int = 400) -> tuple[str, str, list[bytes]]:
    run_id = uuid.uuid4().hex[:8]
    source, sink = f"token-in-{run_id}", f"token-out-{run_id}"
    make_topics(broker, source, sink)
    values = [f"record-{i}".encode() for i in range(count)]
    return source, sink, values


def test_the_jobs_source_and_output_consume_and_produce_with_a_token_callback_inside_bytewax(secured_broker) -> None:
    """Each client waits for a token of its own that takes a moment to make (a pod's first, cold STS
    call): before the fix, bytewax's consumer then failed in consume() with SystemError and hung."""
    broker = secured_broker("oauthbearer")
    source, sink, values = _topics(broker)
    env = broker.token_client_env("tests.support.token_flow:cold")
    env["KAFKA_BROKERS"] = broker.bootstrap  # the listener without re-authentication: this is about the start
    settings = KafkaSettings.from_env(env)
    assert produce_messages(
        ((source, b"k", v) for v in values), ",".join(settings.brokers), client=settings.client
    ) == len(values)

    result = run_dataflow(
        "tests.support.token_flow:flow",
        {**env, "TOKEN_FLOW_IN": source, "TOKEN_FLOW_OUT": sink, "TOKEN_FLOW_COLD": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SystemError" not in result.stderr
    assert Counter(result.stdout.split()) == Counter(v.decode() for v in values)
    assert Counter(v for _, v in read_topic(broker.setup_bootstrap, sink)) == Counter(values)


def test_tokens_are_refreshed_before_they_expire_on_a_listener_that_signs_in_again(
    secured_broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token listener ends every session after 3 s or when its token expires; tokens last 6 s.
    The generators' producer, spread over 12 s, outlives two tokens: every record arrives."""
    broker = secured_broker("oauthbearer")
    source, _, values = _topics(broker, count=600)
    token_log = tmp_path / "tokens.log"
    monkeypatch.setenv("TOKEN_LOG", str(token_log))
    settings = KafkaSettings.from_env(broker.token_client_env("tests.support.oauth_tokens:short_lived"))
    brokers = ",".join(settings.brokers)
    assert produce_messages(((source, b"k", v) for v in values), brokers, rate=50, client=settings.client) == 600
    assert Counter(v for _, v in read_topic(broker.setup_bootstrap, source)) == Counter(values)
    assert len(token_log.read_text().splitlines()) >= 3  # one at start, then one every ~5 s


def test_a_token_that_is_not_refreshed_ends_the_session(secured_broker) -> None:
    """The control: the same producer with tokens that expire while librdkafka is told an hour fails."""
    broker = secured_broker("oauthbearer")
    source, _, values = _topics(broker, count=600)
    settings = KafkaSettings.from_env(broker.token_client_env("tests.support.oauth_tokens:stale"))
    with pytest.raises(ProduceError) as raised:
        produce_messages(
            ((source, b"k", v) for v in values), ",".join(settings.brokers), rate=50, client=settings.client
        )
    assert "SASL authentication failed" in str(raised.value)
    assert str(raised.value).endswith(
        "check the tokens KAFKA_OAUTH_TOKEN_PROVIDER=tests.support.oauth_tokens:stale makes"
    )
    assert oauth_tokens.SHORT_LIFETIME_S < 12  # it expired within the run
