"""Kafka client settings: where properties come from, what is refused up front, what is never shown."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from connectors.transports.kafka_client import KafkaClientConfig, from_env
from connectors.transports.kafka_problems import explain_connection_errors
from dataflows.settings import ConfigError, KafkaSettings


def test_named_settings_properties_and_single_properties_combine() -> None:
    config = from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
            "KAFKA_PROPERTIES": "client.id=job-1; socket.keepalive.enable=true\nsasl.oauthbearer.extensions=a=1,b=2",
            "KAFKA_PROPERTY_SSL__ENDPOINT__IDENTIFICATION__ALGORITHM": "none",
        }
    )
    assert config.properties == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "p",
        "client.id": "job-1",
        "socket.keepalive.enable": "true",
        "sasl.oauthbearer.extensions": "a=1,b=2",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert config.sources["ssl.endpoint.identification.algorithm"] == (
        "KAFKA_PROPERTY_SSL__ENDPOINT__IDENTIFICATION__ALGORITHM"
    )
    assert config.sources["client.id"] == "KAFKA_PROPERTIES"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not a security protocol"),
        ({"KAFKA_PROPERTIES": "security.protocol=SASL_SLL"}, "KAFKA_PROPERTIES='SASL_SLL' is not a security protocol"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM=PLAIN needs SASL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_PASSWORD is not set: SASL PLAIN needs",
        ),
        ({"KAFKA_PROPERTIES": "bootstrap.servers=x:1"}, "KAFKA_PROPERTIES sets bootstrap.servers: set KAFKA_BROKERS"),
        (
            {"KAFKA_PROPERTY_ENABLE__AUTO__COMMIT": "true"},
            "KAFKA_PROPERTY_ENABLE__AUTO__COMMIT sets enable.auto.commit",
        ),
        ({"KAFKA_PROPERTIES": "client.id=a;b"}, "KAFKA_PROPERTIES entry 2 of 2 is not name=value"),
        ({"KAFKA_SSL_KEY_LOCATION": "/no/such/key.pem"}, "KAFKA_SSL_KEY_LOCATION=/no/such/key.pem does not exist"),
    ],
)
def test_mistakes_are_refused_naming_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env(env)
    assert str(raised.value).startswith(message)


def test_a_secret_is_never_in_a_message_or_the_masked_form(tmp_path: Path) -> None:
    secret, other = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "alice"}
    with pytest.raises(ValueError) as raised:
        from_env({**env, "KAFKA_SASL_PASSWORD": secret, "KAFKA_PROPERTIES": f"sasl.password={other}"})
    assert secret not in str(raised.value) and other not in str(raised.value)
    with pytest.raises(ValueError) as raised:
        from_env({"KAFKA_PROPERTIES": f"ssl.key.password{other}"})  # '=' forgotten
    assert other not in str(raised.value)

    config = from_env({**env, "KAFKA_SASL_PASSWORD": secret})
    masked = config.masked()
    assert secret not in masked and "alice" not in masked and "sasl.password=***" in masked
    assert secret not in repr(config) and secret not in repr(KafkaSettings(["h:1"], config))
    assert config.redact(f"failed with {secret}") == "failed with ***"


def test_librdkafka_checks_names_and_values_up_front() -> None:
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env({"KAFKA_PROPERTY_FETCH__MAX__BYTEZ": "1"})
    assert str(raised.value).startswith("KAFKA_PROPERTY_FETCH__MAX__BYTEZ sets fetch.max.bytez, which librdkafka")
    with pytest.raises(ConfigError) as raised:
        KafkaSettings.from_env({"KAFKA_PROPERTIES": "linger.ms=later"})
    assert str(raised.value).startswith("KAFKA_PROPERTIES (linger.ms): librdkafka refused it")
    assert KafkaSettings.from_env({"KAFKA_PROPERTIES": "linger.ms=5;fetch.max.bytes=1048576"}).client_config == {
        "linger.ms": "5",
        "fetch.max.bytes": "1048576",
    }


def test_connection_errors_name_the_setting_that_was_used() -> None:
    config = from_env({"KAFKA_PROPERTIES": "security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-256"} | {
        "KAFKA_PROPERTY_SASL__USERNAME": "u",
        "KAFKA_PROPERTY_SASL__PASSWORD": "secret-value",
    })  # fmt: skip
    reports: list[tuple[int | None, str]] = [
        (-169, "sasl_ssl://h:9096/bootstrap: SASL authentication error: Authentication failed (after 5ms in state X)")
    ]
    line = explain_connection_errors(reports, ["h:9096"], config)
    assert line is not None and line.startswith("Kafka at h:9096: SASL authentication failed (SASL authentication")
    assert "KAFKA_PROPERTY_SASL__USERNAME and KAFKA_PROPERTY_SASL__PASSWORD" in line
    # One close by a broker going down is not a wrong protocol; a listener that always closes is.
    closed = (None, "FAIL [rdkafka#producer-1] [thrd:x]: h:9092/bootstrap: Disconnected: connection closed by peer: "
                    "receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)")  # fmt: skip
    plain = KafkaClientConfig()
    assert explain_connection_errors([closed], ["h:9092"], plain) is None
    line = explain_connection_errors([closed] * 3, ["h:9092"], plain)
    assert line is not None and "set KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL" in line
    assert explain_connection_errors([(-195, "h:1/bootstrap: Connect to ipv4#h:1 failed: Connection refused")], ["h:1"], plain) is None  # fmt: skip
