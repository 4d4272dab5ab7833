"""Kafka client settings: any librdkafka property from the environment, checked up front, never logged.

Where the properties come from (every job and producer reads the same; docs/settings.md):
- `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`,
  `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CA_LOCATION`, `KAFKA_SSL_CERTIFICATE_LOCATION`,
  `KAFKA_SSL_KEY_LOCATION`, `KAFKA_SSL_KEY_PASSWORD`: the common ones, by name;
- `KAFKA_PROPERTIES`: `name=value` pairs separated by `;` or new lines, e.g.
  `sasl.oauthbearer.method=oidc;sasl.oauthbearer.client.id=...`;
- `KAFKA_PROPERTY_<name>`: one property, dots written `__`, any case, e.g.
  `KAFKA_PROPERTY_SASL__OAUTHBEARER__CLIENT__SECRET` (for values holding `;`, and for
  secrets mounted one per variable);
- `KAFKA_SASL_MECHANISM=AWS_MSK_IAM`, `KAFKA_OAUTH_TOKEN_PROVIDER`: tokens made in Python (kafka_token.py).
Checked before anything connects: names librdkafka does not know, values it refuses,
the security protocol and SASL mechanism, files that do not exist, a property set twice
with different values, properties the jobs own. Each problem is one line naming the
setting that caused it. Values of secret properties are never shown (`masked`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from connectors.errors import ConfigError
from connectors.transports import kafka_token
from connectors.transports.kafka_token import TokenCallback, TokenError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI", kafka_token.MSK_IAM)

NAMED_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
    "KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
}
PROPERTIES = "KAFKA_PROPERTIES"
PROPERTY_PREFIX = "KAFKA_PROPERTY_"

# Set by the jobs themselves, or by another setting.
OWNED = {
    "bootstrap.servers": "set KAFKA_BROKERS instead",
    "metadata.broker.list": "set KAFKA_BROKERS instead",
    "group.id": "set CONSUMER_GROUP instead",
    "enable.partition.eof": "set BOUNDED instead",
    "auto.offset.reset": "set START_POSITION instead",
    "enable.auto.commit": "the jobs commit offsets at their snapshots",
    "enable.auto.offset.store": "the jobs keep offsets in their snapshots",
    "transactional.id": "the jobs' Kafka outputs set one per sink partition (connectors/transports/kafka_sink.py)",
    "enable.idempotence": "the jobs' Kafka outputs are transactional, hence idempotent",
}
# Properties naming a file that must exist.
FILE_PROPERTIES = (
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.jwt.template.file",
)
# Whose values are never shown: secrets, and what could hold one (or who the client is).
_SENSITIVE = re.compile(r"password|secret|passphrase|username|token|\.pem$|^ssl_key$|\.config$|jaas|extensions")


def sensitive(name: str) -> bool:
    return bool(_SENSITIVE.search(name))


class KafkaConfigError(ConfigError):
    """A Kafka setting is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class KafkaClientConfig:
    """librdkafka properties with the setting each came from; never printed with values."""

    properties: dict[str, str] = field(default_factory=dict, repr=False)
    sources: dict[str, str] = field(default_factory=dict)  # property -> the setting that set it
    token: TokenCallback | None = field(default=None, repr=False, compare=False)  # oauth_cb, one for all clients

    def setting(self, prop: str, default: str | None = None) -> str:
        """The setting a property came from (or the named setting a user would set)."""
        if prop in self.sources:
            return self.sources[prop]
        named = {v: k for k, v in NAMED_SETTINGS.items()}
        return named.get(prop, default or f"{PROPERTY_PREFIX}{prop.replace('.', '__')}")

    def client_config(self) -> dict[str, Any]:
        """What a confluent-kafka client gets on top of bootstrap.servers."""
        return dict(self.properties) if self.token is None else self.token.client_config(self.properties)

    def masked(self) -> str:
        """`name=value` of every property, secrets as `***`: safe to log."""
        shown = [f"{k}={'***' if sensitive(k) else v}" for k, v in sorted(self.properties.items())]
        shown += [f"oauth_cb={self.token.source}"] if self.token is not None else []
        return ", ".join(shown) or "no security (PLAINTEXT)"

    def redact(self, text: str) -> str:
        """`text` with the value of every sensitive property replaced by `***`."""
        for name, value in self.properties.items():
            if sensitive(name) and len(value) >= 3:
                text = text.replace(value, "***")
        return text

    @property
    def protocol(self) -> str:
        return self.properties.get("security.protocol", "PLAINTEXT").upper()


def from_env(env: Mapping[str, str]) -> KafkaClientConfig:
    """Collect and check the properties; raises KafkaConfigError naming the setting."""
    properties: dict[str, str] = {}
    sources: dict[str, str] = {}

    def put(prop: str, value: str, setting: str) -> None:
        prop = prop.strip()
        if not prop:
            raise KafkaConfigError(f"{setting}: a property has no name: write name=value, e.g. ssl.ca.location=/ca.pem")
        if prop in OWNED:
            raise KafkaConfigError(f"{setting} sets {prop}: {OWNED[prop]}")
        if prop in properties and properties[prop] != value:
            shown = "" if sensitive(prop) else f" ({properties[prop]!r} and {value!r})"
            raise KafkaConfigError(
                f"{sources[prop]} and {setting} both set {prop} differently{shown}: keep one of them"
            )
        properties[prop] = value
        sources[prop] = setting

    for setting, prop in NAMED_SETTINGS.items():
        value = env.get(setting, "").strip()
        if value:
            put(prop, value, setting)
    raw = env.get(PROPERTIES, "")
    entries = [entry for entry in re.split(r"[;\n]", raw) if entry.strip()]
    for number, entry in enumerate(entries, 1):
        name, eq, value = entry.partition("=")
        if not eq:  # not echoed: it may be the tail of a secret that held a ';'
            raise KafkaConfigError(
                f"{PROPERTIES} entry {number} of {len(entries)} is not name=value: separate entries with ';', "
                "e.g. security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512 (a value holding ';' goes in "
                "KAFKA_PROPERTY_<name>)"
            )
        put(name.strip().lower(), value.strip(), PROPERTIES)
    for setting in sorted(env):
        if setting.startswith(PROPERTY_PREFIX) and env[setting].strip():
            prop = setting[len(PROPERTY_PREFIX) :].lower().replace("__", ".")
            put(prop, env[setting].strip(), setting)

    protocol = _upper_choice(properties, sources, "security.protocol", SECURITY_PROTOCOLS, "security protocol")
    mechanism = _upper_choice(properties, sources, "sasl.mechanism", SASL_MECHANISMS, "SASL mechanism")
    if mechanism == kafka_token.MSK_IAM:
        protocol = kafka_token.msk_iam_properties(properties, sources)
    if mechanism is not None:
        if not (protocol or "").startswith("SASL_"):
            raise KafkaConfigError(
                f"{sources['sasl.mechanism']}={mechanism} needs SASL: set KAFKA_SECURITY_PROTOCOL to SASL_SSL "
                "(or SASL_PLAINTEXT)"
            )
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            for prop in ("sasl.username", "sasl.password"):
                if prop not in properties:
                    raise KafkaConfigError(
                        f"{NAMED_SETTINGS_OF[prop]} is not set: SASL {mechanism} needs "
                        "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                    )
    for prop in FILE_PROPERTIES:
        path = properties.get(prop)
        if path is not None and not (os.path.isfile(path) or (prop == "ssl.ca.location" and os.path.isdir(path))):
            if path == "probe" and prop == "ssl.ca.location":  # librdkafka: look in the system's usual places
                continue
            reason = "is not a file" if os.path.exists(path) else "does not exist"
            raise KafkaConfigError(f"{sources[prop]}={path} {reason}: point it at the {_FILE_KINDS.get(prop, 'file')}")
        if path is not None and not os.access(path, os.R_OK):
            raise KafkaConfigError(f"{sources[prop]}={path} is not readable by this user: fix its permissions")

    try:
        token = kafka_token.from_settings(mechanism or "", properties, sources, env)
    except TokenError as exc:
        raise KafkaConfigError(str(exc)) from None
    return KafkaClientConfig(properties, sources, token)


def _upper_choice(
    properties: dict[str, str], sources: dict[str, str], prop: str, allowed: Sequence[str], what: str
) -> str | None:
    """`prop` upper-cased in `properties` if set, after checking it is one of `allowed`."""
    value = properties.get(prop)
    if value is None:
        return None
    if value.upper() not in allowed:
        raise KafkaConfigError(f"{sources[prop]}={value!r} is not a {what}: use one of {', '.join(allowed)}")
    properties[prop] = value.upper()
    return properties[prop]


NAMED_SETTINGS_OF = {v: k for k, v in NAMED_SETTINGS.items()}
_FILE_KINDS = {
    "ssl.ca.location": "CA certificate (PEM) that signed the broker's certificate",
    "ssl.certificate.location": "client certificate (PEM)",
    "ssl.key.location": "client private key (PEM)",
    "ssl.keystore.location": "client keystore (PKCS#12)",
}


def check_with_librdkafka(brokers: list[str], config: KafkaClientConfig) -> None:
    """Create (and drop) a producer and a consumer with the properties: librdkafka checks names and values,
    and loads the certificates and keys. Nothing connects."""
    from confluent_kafka import Consumer, Producer

    def make_consumer(c: dict[str, Any]) -> Any:
        return Consumer({**c, "group.id": "waxstreams-config-check"})

    base = {"bootstrap.servers": ",".join(brokers), "log_level": 0}
    for make in (Producer, make_consumer):
        try:
            _create_and_close(make, {**base, **config.properties})  # a callback would wait for a token
        except (KafkaException, TypeError, ValueError) as exc:
            text = _error_text(exc)
            # librdkafka may name a property by its canonical name (linger.ms is queue.buffering.max.ms):
            # the user's own entry is the one without which the client can be created.
            culprit = None
            if not any(prop in text for prop in config.properties):
                for prop in config.properties:
                    rest = {k: v for k, v in config.properties.items() if k != prop}
                    try:
                        _create_and_close(make, {**base, **rest})
                    except (KafkaException, TypeError, ValueError):
                        continue
                    culprit = prop
                    break
            raise KafkaConfigError(_explain_text(text, config, culprit)) from None
    if config.token is not None:
        try:
            config.token.check()  # one token now: library, credentials and region, in one line
        except TokenError as exc:
            raise KafkaConfigError(str(exc)) from None


def _create_and_close(make: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> None:
    client = make(config)
    close = getattr(client, "close", None)
    if close is not None:
        close()


def _error_text(exc: Exception) -> str:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _explain_text(text: str, config: KafkaClientConfig, culprit: str | None = None) -> str:
    text = config.redact(text)
    unknown = re.search(r'No such configuration property: "([^"]+)"', text)
    if unknown:
        prop = unknown.group(1)
        return (
            f"{config.setting(prop)} sets {prop}, which librdkafka does not know: fix the name "
            "(see librdkafka's CONFIGURATION.md)"
        )
    if "ssl.key.location failed" in text and "ssl.key.password" in config.properties:
        return (
            f"{config.setting('ssl.key.location')} cannot be read with {config.setting('ssl.key.password')} "
            f"(wrong password, or not a PEM private key): {text}"
        )
    named = [p for p in sorted(config.properties, key=len, reverse=True) if p in text]
    prop = culprit or (named[0] if named else None)
    if prop is not None:
        return f"{config.setting(prop)} ({prop}): librdkafka refused it: {text}"
    return f"Kafka client settings refused by librdkafka: {text}"
