"""Reading settings from the environment: the one parser for text, numbers, durations, booleans,
choices and ports, so every setting's error reads the same: one line naming it and the fix.

The job settings (dataflows/settings.py) and the Kinesis settings (connectors/transports/kinesis/
settings.py) read through it; the Kafka client properties (connectors/transports/kafka_client.py)
are librdkafka's own strings and only collected and checked there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from connectors.errors import ConfigError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class Env:
    """Typed reads of `env`; a wrong value raises `error` (a ConfigError) naming the setting and the fix."""

    def __init__(self, env: Mapping[str, str], error: type[ConfigError] = ConfigError) -> None:
        self._env = env
        self._error = error

    def text(self, name: str, default: str) -> str:
        value = self._env.get(name, default).strip()
        if not value:
            msg = f"{name} is empty: set it or unset it to use the default {default!r}"
            raise self._error(msg)
        return value

    def optional(self, name: str, default: str | None = None) -> str | None:
        value = self._env.get(name, default if default is not None else "")
        return value.strip() or None

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
        raw = self._env.get(name, str(default)).strip()
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            msg = f"{name}={raw!r} is not {kind}: set it to e.g. {default}"
            raise self._error(msg) from None
        if value < minimum:
            msg = f"{name}={raw} is below the minimum {minimum}: set it to e.g. {default}"
            raise self._error(msg)
        return value

    def seconds(self, name: str, default: float, *, minimum: float) -> timedelta:
        """A duration given in seconds (the setting's name ends in _SECONDS)."""
        return timedelta(seconds=self.number(name, default, minimum=minimum))

    def port(self, name: str) -> int | None:
        if not self._env.get(name, "").strip():
            return None
        port = int(self.number(name, 9100, minimum=1, integer=True))
        if port > 65535:
            msg = f"{name}={port} is not a TCP port: use 1..65535"
            raise self._error(msg)
        return port

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name, "true" if default else "false").strip().lower()
        if raw in TRUE:
            return True
        if raw in FALSE:
            return False
        msg = f"{name}={raw!r} is not a boolean: set it to true or false"
        raise self._error(msg)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            msg = f"{name}={value!r} is not supported: use one of {', '.join(choices)}"
            raise self._error(msg)
        return value
