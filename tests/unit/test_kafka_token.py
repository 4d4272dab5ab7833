"""OAUTHBEARER tokens made in Python: MSK IAM's signer, the refresh rules, the settings and their one-line errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from hypothesis import given
from hypothesis import strategies as st

from connectors.transports import kafka_token
from connectors.transports.kafka_client import from_env
from connectors.transports.kafka_problems import explain_connection_errors
from connectors.transports.kafka_token import (
    TokenCallback,
    TokenError,
    check_expiry,
    expiry_seconds,
    refresh_at,
    region_for,
    reuse_token,
)
from dataflows.settings import ConfigError, KafkaSettings
from tests.support import oauth_tokens

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
SOON = time.time() + 3600  # an expiry a provider returns
MSK_BROKERS = (
    "b-1.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098,b-2.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098"
)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed fake credentials from the environment, and nothing else of the chain (no files, no IMDS)."""
    _no_aws(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)


def _no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_REGION", "AWS_DEFAULT_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _decode(token: str) -> str:
    assert not set("=+/") & set(token)  # base64url, padding removed
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _sigv4_signature(url: str, region: str, secret: str) -> str:
    """SigV4 of a presigned GET, computed from the AWS documentation (not botocore)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("X-Amz-Signature", "User-Agent")]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query))
    canonical = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}\n", "host", hashlib.sha256(b"").hexdigest()]
    )
    stamp = dict(query)["X-Amz-Date"]
    scope = f"{stamp[:8]}/{region}/kafka-cluster/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], region, "kafka-cluster", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _check_msk_token(token: str, expiry_s: float, region: str, before: float, after: float) -> None:
    url = _decode(token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", f"kafka.{region}.amazonaws.com", "/")
    query = dict(parse_qsl(parts.query))
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    assert before - 1 <= signed_at <= after
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Credential"] == f"{ACCESS_KEY}/{query['X-Amz-Date'][:8]}/{region}/kafka-cluster/aws4_request"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Security-Token"] == SESSION_TOKEN
    assert query["User-Agent"] == "aws-msk-iam-sasl-signer-python/1.0.2"
    assert query["X-Amz-Signature"] == _sigv4_signature(url, region, SECRET_KEY)
    assert expiry_s == signed_at + 900  # epoch seconds: what librdkafka's oauth_cb takes


def test_the_signer_makes_a_presigned_connect_url(aws_env: None) -> None:
    before = time.time()
    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token("eu-west-1")
    _check_msk_token(token, expiry_seconds(expiry_ms), "eu-west-1", before, time.time())


def test_the_jobs_msk_provider_hands_librdkafka_seconds(aws_env: None) -> None:
    before = time.time()
    token, expiry = kafka_token.msk_iam_provider("us-east-2")("")
    _check_msk_token(token, expiry, "us-east-2", before, time.time())


@pytest.mark.parametrize(
    ("brokers", "env", "region"),
    [
        ([MSK_BROKERS.split(",")[0]], {"AWS_REGION": "us-east-1"}, "eu-west-1"),  # the cluster's own region wins
        (["boot-x7.c1.kafka-serverless.ap-southeast-2.amazonaws.com:9098"], {}, "ap-southeast-2"),
        (["b-1.c.x.c3.kafka.cn-north-1.amazonaws.com.cn:9098"], {}, "cn-north-1"),
        (["kafka.internal:9098"], {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-west-2"}, "eu-central-1"),
        (["kafka.internal:9098"], {"AWS_DEFAULT_REGION": "us-west-2"}, "us-west-2"),
    ],
)
def test_region_comes_from_the_broker_names_else_the_environment(brokers, env, region) -> None:
    assert region_for(brokers, env) == region


def test_region_errors_name_the_setting() -> None:
    with pytest.raises(
        TokenError, match=r"^KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs the cluster's AWS region: set AWS_REGION"
    ):
        region_for(["kafka.internal:9098"], {})
    two = ["b-1.a.b.c2.kafka.eu-west-1.amazonaws.com:9098", "b-2.a.b.c2.kafka.us-east-1.amazonaws.com:9098"]
    with pytest.raises(
        TokenError, match=r"^KAFKA_BROKERS names brokers in several AWS regions \(eu-west-1, us-east-1\)"
    ):
        region_for(two, {})


def test_expiry_is_epoch_seconds_in_the_future() -> None:
    now = 1_800_000_000.0
    assert expiry_seconds(1_800_000_900_000) == 1_800_000_900.0
    assert check_expiry(now + 900, now, "p") == now + 900
    with pytest.raises(
        TokenError, match=r"^p returned an expiry 56982 years ahead: return epoch seconds, not milliseconds"
    ):
        check_expiry((now + 900) * 1000, now, "p")
    with pytest.raises(TokenError, match=r"^p returned a token that expired 5 s ago: check the clock"):
        check_expiry(now - 5, now, "p")


# -- refresh timing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued", "now", "reused"),
    [
        (0, 0, True),  # just made
        (0, 450, True),  # half of MSK's 900 s left: still shared
        (0, 451, False),  # less than half: the client gets its own, new token
        (0, 899, False),
    ],
)
def test_a_token_is_shared_while_half_its_lifetime_is_left(issued: float, now: float, reused: bool) -> None:
    assert reuse_token(issued, issued + 900, now) is reused


def test_librdkafka_refreshes_an_msk_token_three_minutes_before_it_expires() -> None:
    assert refresh_at(1000, 1900) == 1000 + 720


@given(
    lifetime=st.floats(min_value=1, max_value=86_400),
    asked=st.floats(min_value=0, max_value=1),  # when another client asks, as a part of the lifetime
)
def test_every_shared_token_is_refreshed_before_it_expires(lifetime: float, asked: float) -> None:
    issued, expiry = 1_800_000_000.0, 1_800_000_000.0 + lifetime
    now = issued + asked * lifetime
    if reuse_token(issued, expiry, now):
        # the client's refresh comes with a tenth of the lifetime still left
        assert refresh_at(now, expiry) <= expiry - 0.1 * lifetime + 1e-6
        assert refresh_at(now, expiry) >= now + 0.4 * lifetime - 1e-6


# -- the callback -----------------------------------------------------------------------------------


def test_the_callback_shares_a_fresh_token_and_makes_a_new_one_late_in_its_life(monkeypatch) -> None:
    made: list[float] = []

    def provider(_config: str) -> tuple[str, float]:
        made.append(clock[0])
        return f"token-{len(made)}", clock[0] + 900

    clock = [1_800_000_000.0]
    monkeypatch.setattr(kafka_token.time, "time", lambda: clock[0])
    callback = TokenCallback(provider, "P", "fix")
    assert callback("") == ("token-1", clock[0] + 900)
    clock[0] += 300
    assert callback("")[0] == "token-1"  # another client, soon after
    clock[0] += 300  # 600 s in: what librdkafka's refresh at 720 s would find, minus a margin
    assert callback("") == ("token-2", clock[0] + 900)
    assert len(made) == 2


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (["tok", SOON], None),  # a list is fine: confluent-kafka gets a tuple
        ("tok", "P returned str: return (token, expiry epoch seconds)"),
        (("tok",), "P returned tuple: return (token, expiry epoch seconds)"),
        (("", SOON), "P returned tuple: return (token, expiry epoch seconds)"),
        (("tok", "2000000000"), "P returned an expiry of type str: return a number"),
        (("tok", 2e12), "P returned an expiry"),
    ],
)
def test_the_callback_returns_the_shape_confluent_kafka_takes_or_raises(returned, message) -> None:
    callback = TokenCallback(lambda _config: returned, "P", "fix")
    if message is None:
        assert callback("") == ("tok", SOON) and isinstance(callback("")[1], float)
        return
    with pytest.raises(TokenError) as raised:
        callback("")
    assert str(raised.value).startswith(message)
    assert callback.last_error == str(raised.value)


def test_a_failing_provider_is_logged_once_per_reason_and_never_the_token(caplog) -> None:
    calls = []

    def provider(_config: str) -> tuple[str, float]:
        calls.append(1)
        if len(calls) <= 2:
            msg = "sts.amazonaws.com unreachable"
            raise ConnectionError(msg)
        return "SECRET-TOKEN-VALUE", time.time() + 900

    callback = TokenCallback(provider, "KAFKA_OAUTH_TOKEN_PROVIDER=m:f", "fix")
    with caplog.at_level(logging.INFO, logger="connectors.transports.kafka_token"):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                callback("")
        assert callback("")[0] == "SECRET-TOKEN-VALUE"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "Kafka OAUTHBEARER token not made: KAFKA_OAUTH_TOKEN_PROVIDER=m:f: ConnectionError: sts.amazonaws.com unreachable"
    ]
    assert "SECRET-TOKEN-VALUE" not in caplog.text and callback.last_error is None


# -- settings -------------------------------------------------------------------------------------------


def test_aws_msk_iam_is_oauthbearer_over_tls_with_the_signer_as_callback(aws_env: None) -> None:
    settings = KafkaSettings.from_env({"KAFKA_BROKERS": MSK_BROKERS, "KAFKA_SASL_MECHANISM": "aws_msk_iam"})
    client = settings.client
    assert client.properties == {"sasl.mechanism": "OAUTHBEARER", "security.protocol": "SASL_SSL"}
    config = settings.client_config
    assert config["oauth_cb"] is client.token and config["statistics.interval.ms"] == "15000"
    token, expiry = config["oauth_cb"]("")
    _check_msk_token(token, expiry, "eu-west-1", time.time() - 5, time.time())
    masked = client.masked()
    assert masked.endswith("oauth_cb=KAFKA_SASL_MECHANISM=AWS_MSK_IAM (region eu-west-1)")
    assert token not in masked and ACCESS_KEY not in masked and token not in repr(settings)


def test_missing_aws_credentials_are_one_line_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_aws(monkeypatch)
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env({"KAFKA_BROKERS": MSK_BROKERS, "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"})
    assert str(raised.value) == (
        "KAFKA_SASL_MECHANISM=AWS_MSK_IAM found no AWS credentials: give the pod an IAM role "
        "(IRSA or EKS Pod Identity) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


def test_a_missing_signer_library_is_one_line_at_start(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", None)  # import fails as when not installed
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env({"KAFKA_BROKERS": MSK_BROKERS, "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"})
    assert str(raised.value) == (
        "KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs AWS's MSK token signer: pip install aws-msk-iam-sasl-signer-python==1.0.2"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "KAFKA_SECURITY_PROTOCOL": "SSL"}, "KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs SASL: set KAFKA_SECURITY_PROTOCOL to SASL_SSL"),
        ({"KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens:unsecured"},
         "KAFKA_SASL_MECHANISM=AWS_MSK_IAM and KAFKA_OAUTH_TOKEN_PROVIDER both make tokens: keep one"),
        ({"KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "KAFKA_PROPERTIES": "sasl.oauthbearer.method=oidc"},
         "KAFKA_PROPERTIES sets sasl.oauthbearer.method, but KAFKA_SASL_MECHANISM=AWS_MSK_IAM (region eu-west-1) makes the tokens: remove it"),
        ({"KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "KAFKA_PROPERTY_STATISTICS__INTERVAL__MS": "1000"},
         "KAFKA_PROPERTY_STATISTICS__INTERVAL__MS sets statistics.interval.ms=1000: with KAFKA_SASL_MECHANISM=AWS_MSK_IAM (region eu-west-1) use 15000 or more"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u",
          "KAFKA_SASL_PASSWORD": "p", "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens:unsecured"},
         "KAFKA_OAUTH_TOKEN_PROVIDER makes OAUTHBEARER tokens: set KAFKA_SASL_MECHANISM=OAUTHBEARER"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens"},
         "KAFKA_OAUTH_TOKEN_PROVIDER='tests.support.oauth_tokens' is not module:function"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens:nothing"},
         "KAFKA_OAUTH_TOKEN_PROVIDER=tests.support.oauth_tokens:nothing: tests.support.oauth_tokens has no function nothing"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens:expiry_in_milliseconds"},
         "KAFKA_OAUTH_TOKEN_PROVIDER=tests.support.oauth_tokens:expiry_in_milliseconds returned an expiry 56"),
    ],
)  # fmt: skip
def test_token_setting_mistakes_are_one_line(aws_env: None, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env({"KAFKA_BROKERS": MSK_BROKERS, **env})
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_provider_of_your_own_is_the_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
           "KAFKA_OAUTH_TOKEN_PROVIDER": "tests.support.oauth_tokens:unsecured"}  # fmt: skip
    config = KafkaSettings.from_env(env).client_config
    token, expiry = config["oauth_cb"]("")
    header, payload, signature = (json.loads(_decode(p)) if p else p for p in token.split("."))
    assert header == {"alg": "none"} and signature == ""
    assert payload["sub"] == oauth_tokens.PRINCIPAL and payload["exp"] == expiry
    assert 3590 < expiry - time.time() <= 3600


def test_a_refused_token_names_what_to_check(aws_env: None) -> None:
    config = from_env({"KAFKA_BROKERS": MSK_BROKERS, "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"})
    reports: list[tuple[int | None, str]] = [
        (-169, "sasl_ssl://b-1:9098/bootstrap: SASL authentication error: Access denied (after 12ms in state AUTH_REQ)")
    ]
    line = explain_connection_errors(reports, ["b-1:9098"], config)
    assert line == (
        "Kafka at b-1:9098: SASL authentication failed (SASL authentication error: Access denied): "
        "check the pod's IAM role: its policy needs kafka-cluster:Connect on the cluster"
    )
    # A token refused when the broker asks to sign in again (KIP-368) is not a missing mechanism.
    again = "sasl_ssl://b-1:9098/1: SASL OAUTHBEARER mechanism handshake failed: Broker: Request not valid in current SASL state: broker's supported mechanisms:  (after 6ms in state AUTH_HANDSHAKE)"  # fmt: skip
    line = explain_connection_errors([(-169, again)], ["b-1:9098"], config)
    assert line is not None and line.startswith("Kafka at b-1:9098: SASL authentication failed (SASL OAUTHBEARER")
    assert line.endswith("check the pod's IAM role: its policy needs kafka-cluster:Connect on the cluster")


@pytest.mark.parametrize(
    ("text", "not_offered"),
    [
        # The broker lists what its listener enables, and ours is not among them.
        (
            "h:9098/bootstrap: SASL OAUTHBEARER mechanism handshake failed: Broker: Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-512,PLAIN (after 3ms in state AUTH_HANDSHAKE)",
            True,
        ),
        # A handshake that fails with no list (a session the broker ended, a re-authentication) says nothing about the mechanism.
        (
            "h:9098/1: SASL OAUTHBEARER mechanism handshake failed: Broker: Request not valid in current SASL state: broker's supported mechanisms:  (after 2ms in state AUTH_HANDSHAKE)",
            False,
        ),
        (
            "h:9098/1: SASL OAUTHBEARER mechanism handshake failed: Local: Broker transport failure: broker's supported mechanisms:  (after 9ms in state AUTH_HANDSHAKE)",
            False,
        ),
    ],
)
def test_only_a_handshake_listing_other_mechanisms_means_ours_is_not_offered(text: str, not_offered: bool) -> None:
    config = from_env(
        {"KAFKA_BROKERS": "h:9098", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    )
    line = explain_connection_errors([(-169, text)], ["h:9098"], config)
    assert line is not None
    assert line.startswith("Kafka at h:9098 does not offer SASL OAUTHBEARER") == not_offered, line
    assert line.startswith("Kafka at h:9098: SASL authentication failed") != not_offered, line
