"""What librdkafka reports while a client connects, and the one line that says which setting
is wrong: a refused login, a certificate not trusted, a listener speaking another protocol."""

from __future__ import annotations

import logging
import re
from typing import Any

from confluent_kafka import KafkaError

from connectors.transports.kafka_client import KafkaClientConfig


class ClientProblems:
    """What librdkafka reports while a client connects: `error_cb` errors and FAIL log lines.

    Both are needed: a plaintext client closed on by a TLS listener shows up only in the
    log (`Disconnected ... in state APIVERSION_QUERY`), error_cb then says just that all
    brokers are down. Pass `config()` into the client's configuration; nothing is printed."""

    def __init__(self) -> None:
        self.reports: list[tuple[int | None, str]] = []
        self._logger = logging.Logger(f"waxstreams.kafka.{id(self)}", logging.DEBUG)
        self._logger.propagate = False
        self._logger.addHandler(_Collect(self.reports))

    def config(self) -> dict[str, Any]:
        return {"error_cb": self._on_error, "logger": self._logger, "log_level": 6}

    def _on_error(self, error: KafkaError) -> None:
        if len(self.reports) < _MAX_REPORTS:
            self.reports.append((error.code(), error.str()))

    def explain(self, brokers: list[str], config: KafkaClientConfig) -> str | None:
        return explain_connection_errors(self.reports, brokers, config)


class _Collect(logging.Handler):
    def __init__(self, into: list[tuple[int | None, str]]) -> None:
        super().__init__()
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._into) < _MAX_REPORTS:
            self._into.append((None, record.getMessage()))


_OFFERED = re.compile(r"broker's supported mechanisms: *([A-Z0-9_,-]+)")


def _not_offered(text: str, mechanism: str) -> bool:
    """A handshake refused with the broker's list of mechanisms, ours not in it. A handshake
    that fails otherwise (a re-authentication, a session the broker ended) names no list."""
    offered = _OFFERED.search(text)
    return offered is not None and mechanism not in offered.group(1).split(",")


_MAX_REPORTS = 500  # a client retrying for long must not grow this without end


def explain_connection_errors(
    reports: list[tuple[int | None, str]], brokers: list[str], config: KafkaClientConfig
) -> str | None:
    """One line for the first report that says what is wrong with the client's settings, else None.

    `reports`: (error code or None for a log line, text) as ClientProblems collects them."""
    where = f"Kafka at {','.join(brokers)}"
    # A listener that expects TLS closes a plaintext client's first request; a broker
    # shutting down may do that once: only a repeated close is taken for a wrong protocol.
    closed_early = sum(_closed_at_first_request(text) for _, text in reports)
    for code, raw in reports:
        text = config.redact(raw)
        if code == KafkaError._AUTHENTICATION or "Authentication failed" in text or "SASL authentication error" in text:
            mechanism = config.properties.get("sasl.mechanism", "")
            if "nsupported SASL mechanism" in text or _not_offered(text, mechanism or "GSSAPI"):
                return (
                    f"{where} does not offer SASL {mechanism or 'GSSAPI'}: set "
                    f"{config.setting('sasl.mechanism', 'KAFKA_SASL_MECHANISM')} to a mechanism its listener enables"
                )
            if config.token is not None:
                fix = config.token.last_error or config.token.auth_fix
            elif mechanism == "OAUTHBEARER":
                fix = "check the token settings (sasl.oauthbearer.* in KAFKA_PROPERTIES)"
            else:
                fix = (
                    f"check {config.setting('sasl.username', 'KAFKA_SASL_USERNAME')} and "
                    f"{config.setting('sasl.password', 'KAFKA_SASL_PASSWORD')} (and KAFKA_SASL_MECHANISM)"
                )
            return f"{where}: SASL authentication failed ({_reason(text)}): {fix}"
        if "certificate verify failed" in text:
            return (
                f"{where}: TLS certificate verify failed ({_reason(text)}): set "
                f"{config.setting('ssl.ca.location', 'KAFKA_SSL_CA_LOCATION')} to the CA that signed the broker's "
                "certificate"
            )
        if any(
            sign in text
            for sign in ("wrong version number", "packet length too long", "record layer failure", "PLAINTEXT broker")
        ):
            return (
                f"{where} does not speak TLS ({_reason(text)}): set "
                f"{config.setting('security.protocol', 'KAFKA_SECURITY_PROTOCOL')} to PLAINTEXT or SASL_PLAINTEXT, "
                "as the listener is"
            )
        if "alert" in text and ("SSL" in text or "TLS" in text or code == KafkaError._SSL):
            return (
                f"{where} refused the TLS handshake ({_reason(text)}): the listener requires a client "
                "certificate: set KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION (mTLS)"
            )
        if not config.protocol.endswith("SSL") and _closed_at_first_request(text) and closed_early >= 3:
            return (
                f"{where} closed the connection at the first request ({config.protocol} client): the listener "
                f"expects TLS or SASL: set {config.setting('security.protocol', 'KAFKA_SECURITY_PROTOCOL')} to "
                "SSL or SASL_SSL (and the SASL settings) as the listener requires"
            )
        if code == KafkaError._SSL:
            return f"{where}: TLS failed ({_reason(text)}): check KAFKA_SECURITY_PROTOCOL and the ssl.* settings"
    return None


def _closed_at_first_request(text: str) -> bool:
    return (
        "incorrect security.protocol" in text
        or "requesting ApiVersion" in text
        or ("closed by peer" in text and "APIVERSION_QUERY" in text)
    )


def _reason(text: str) -> str:
    """librdkafka's message without its broker prefix and state suffix."""
    text = re.sub(r"^[A-Z]+ \[[^\]]*\] \[[^\]]*\]: ", "", text.strip())  # a log line's facility and thread
    text = re.sub(r"^[^ ]+/(bootstrap|\d+): ", "", text)
    text = re.sub(r" \(after \d+ms in state [A-Z_]+\)$", "", text)
    text = text.split(", verify that ssl.ca.location")[0]  # librdkafka's own advice; ours follows
    return text.replace("\n", " ")
