"""One Kafka partition read natively (the optional `waxstreams_native` extension, native/): whole
columns per batch instead of one Python object per message.

The extension calls the same librdkafka as confluent-kafka, the very library confluent-kafka's
wheel ships (opened by path at first use, its version checked against confluent-kafka's), with
`rd_kafka_consume_batch_queue` and the GIL released; values and keys come as Arrow columns that
polars takes without copying, offsets and timestamps as int64 arrays. The consumer configuration
is confluent-kafka's: every librdkafka property passes through, and `error_cb`, `logger` and
`oauth_cb` are called as confluent-kafka calls them (so ClientProblems and the token callback
work unchanged). `make install` builds the extension when `cargo` is on PATH, and the image
installs the wheel it made; without it, `unavailable()` says so in one line.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np
import polars as pl
from confluent_kafka import KafkaError, KafkaException

from connectors.errors import WaxstreamsError
from connectors.transports.kafka_client import KafkaClientConfig, KafkaConfigError, sensitive

log = logging.getLogger(__name__)

# librdkafka's logical offsets, as `start_offset`.
OFFSET_BEGINNING = -2
OFFSET_END = -1
OFFSET_STORED = -1000

BUILD_FIX = "install a Rust toolchain (cargo on PATH) and run make install (then make image, for the image)"

# librdkafka's syslog levels as logging levels (confluent-kafka's mapping).
_PY_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR, 4: logging.WARNING}
_PY_LEVELS |= {5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
# confluent-kafka's Python-only keys the reader does not call: a job that needs them uses confluent-kafka.
_UNSUPPORTED_CALLBACKS = ("stats_cb", "throttle_cb", "on_commit", "on_delivery", "on_assign", "on_revoke")


class NativeReaderUnavailable(WaxstreamsError, RuntimeError):
    """The native reader cannot be used here; the message says why and the fix."""


@dataclass(frozen=True)
class ColumnBatch:
    """One read of a partition, in offset order. `reached_end`: the partition's end was reached
    after these (only with `enable.partition.eof=true`). `errors`: consumer-level errors librdkafka
    reported in between (not events; it keeps retrying), logged as warnings too."""

    values: pl.Series  # Binary, null for a message without a value
    offsets: np.ndarray  # int64
    timestamps: np.ndarray  # int64, ms since the epoch (-1 where the message has none)
    reached_end: bool
    keys: pl.Series = field(default_factory=lambda: pl.Series("key", [], dtype=pl.Binary))  # Binary, null: no key
    errors: tuple[KafkaError, ...] = ()

    def __len__(self) -> int:
        return len(self.offsets)


_module: types.ModuleType | None = None
_unavailable: str | None = None


def unavailable() -> str | None:
    """None when the native reader can be used, else one line saying why and the fix."""
    try:
        _load()
    except NativeReaderUnavailable as exc:
        return str(exc)
    return None


def unusable(config: Mapping[str, Any]) -> str | None:
    """None when the native reader can read with this consumer configuration, else why and the fix."""
    why = unavailable()
    if why is None:
        try:
            split_config(config)
        except KafkaConfigError as exc:
            why = str(exc)
    return why


def _load() -> types.ModuleType:
    global _module, _unavailable
    if _module is not None:
        return _module
    if _unavailable is not None:
        raise NativeReaderUnavailable(_unavailable)
    try:
        _module = _open()
    except NativeReaderUnavailable as exc:
        _unavailable = str(exc)
        raise
    return _module


def _open() -> types.ModuleType:
    try:
        import waxstreams_native  # type: ignore[import-not-found]
    except ImportError as exc:
        msg = f"the native Kafka reader (waxstreams_native) is not installed ({exc}): {BUILD_FIX}"
        raise NativeReaderUnavailable(msg) from None
    if not hasattr(waxstreams_native.PartitionReader, "watermarks"):  # built from an older checkout
        msg = f"the native Kafka reader installed is older than this checkout (no lag gauge): {BUILD_FIX}"
        raise NativeReaderUnavailable(msg)
    path = librdkafka_path()
    try:
        version, version_str = waxstreams_native.load(str(path))
    except RuntimeError as exc:
        msg = f"the native Kafka reader cannot open {path} ({exc}): reinstall confluent-kafka, then {BUILD_FIX}"
        raise NativeReaderUnavailable(msg) from None
    expected_str, expected = confluent_kafka.libversion()
    if version != expected:
        msg = (
            f"the native Kafka reader opened librdkafka {version_str} at {path}, confluent-kafka uses "
            f"{expected_str}: reinstall confluent-kafka's wheel"
        )
        raise NativeReaderUnavailable(msg)
    return waxstreams_native  # type: ignore[no-any-return]


def librdkafka_path() -> Path:
    """The librdkafka confluent-kafka loaded: the one its extension maps, else the one its wheel ships."""
    import confluent_kafka.cimpl

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    mapped = {line.split(maxsplit=5)[-1] for line in maps.splitlines() if "librdkafka" in line and "/" in line}
    if len(mapped) == 1:
        return Path(mapped.pop())
    shipped = sorted((Path(confluent_kafka.cimpl.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*"))
    if len(shipped) != 1:
        msg = f"confluent-kafka's librdkafka not found (found {len(mapped) or len(shipped)}): {BUILD_FIX}"
        raise NativeReaderUnavailable(msg)
    return shipped[0]


class NativePartitionReader:
    """One assigned partition of `topic`, read from `start_offset` (an offset, or OFFSET_BEGINNING,
    OFFSET_END, OFFSET_STORED). `config`: a confluent-kafka consumer configuration (bootstrap.servers,
    group.id for commits, any librdkafka property, `error_cb`, `logger`, `oauth_cb`). `client`: where
    the properties came from, for error messages naming the setting (else the property is named)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        partition: int,
        start_offset: int,
        client: KafkaClientConfig | None = None,
    ) -> None:
        native = _load()
        self._topic, self._partition = topic, partition
        self._client = client or KafkaClientConfig()
        properties, callbacks = split_config(config)
        if not config.get("group.id"):
            msg = "Kafka consumer setting group.id is not set: the native reader needs one (the jobs' CONSUMER_GROUP)"
            raise KafkaConfigError(msg)
        try:
            self._reader = native.PartitionReader(properties, topic, partition, start_offset, **callbacks)
        except native.ConfigError as exc:
            name, reason = exc.args
            raise KafkaConfigError(self._refused(name, reason, config)) from None
        except native.KafkaError as exc:
            raise KafkaException(KafkaError(exc.args[0], exc.args[2])) from None

    def read(self, max_messages: int, timeout_s: float) -> ColumnBatch:
        """Up to `max_messages`, waiting up to `timeout_s` for the first (the GIL released meanwhile)."""
        values, keys, offsets, timestamps, reached_end, raw_errors = self._reader.read(max_messages, timeout_s)
        errors = tuple(KafkaError(code, reason) for code, _name, reason in raw_errors)
        for error in errors:
            log.warning("Kafka consumer error on %s/%d: %s", self._topic, self._partition, error)
        return ColumnBatch(
            values=pl.Series(values).alias("value"),  # no copy: Arrow import
            offsets=np.frombuffer(offsets, dtype=np.int64),
            timestamps=np.frombuffer(timestamps, dtype=np.int64),
            reached_end=reached_end,
            keys=pl.Series(keys).alias("key"),
            errors=errors,
        )

    def commit(self, offset: int, asynchronous: bool) -> None:
        """Commits `offset` (the next to read) for lag tools; KafkaException as confluent-kafka raises it."""
        try:
            self._reader.commit(offset, asynchronous)
        except _load().KafkaError as exc:
            raise KafkaException(KafkaError(exc.args[0], exc.args[2])) from None

    def watermarks(self) -> tuple[int, int]:
        """(low, high): the partition's watermarks from the last fetch response (librdkafka's cache,
        no broker round trip); high is the offset the next record will get. -1001 until known."""
        try:
            low, high = self._reader.watermarks()
        except _load().KafkaError as exc:
            raise KafkaException(KafkaError(exc.args[0], exc.args[2])) from None
        return int(low), int(high)

    def close(self) -> None:
        self._reader.close()

    @property
    def closed(self) -> bool:
        return bool(self._reader.closed)

    def __enter__(self) -> NativePartitionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refused(self, name: str, reason: str, config: Mapping[str, Any]) -> str:
        for prop, value in config.items():
            if sensitive(prop) and isinstance(value, str) and len(value) >= 3:
                reason = reason.replace(value, "***")
        reason = self._client.redact(reason).strip().replace("\n", " ")
        if not name:  # refused when the client was made: a property the text names, if any
            named = [p for p in sorted(config, key=len, reverse=True) if p in reason]
            name = named[0] if named else ""
        if not name:
            return f"Kafka client settings refused by librdkafka: {reason}: fix the security and ssl/sasl settings"
        setting = f"{self._client.setting(name)} ({name})" if name in self._client.sources else f"Kafka property {name}"
        return f"{setting}: librdkafka refused it: {reason}: fix or remove it (see librdkafka's CONFIGURATION.md)"


def split_config(config: Mapping[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Callable[..., Any]]]:
    """confluent-kafka's configuration as (librdkafka properties, the extension's callbacks)."""
    properties: list[tuple[str, str]] = []
    callbacks: dict[str, Callable[..., Any]] = {}
    for name, value in config.items():
        if name == "error_cb":
            callbacks["error_cb"] = _error_cb(value)
        elif name == "logger":
            callbacks["log_cb"] = _log_cb(value)
        elif name == "oauth_cb":
            callbacks["token_cb"] = value
        elif name in _UNSUPPORTED_CALLBACKS or callable(value):
            msg = f"Kafka consumer setting {name}: the native reader does not call it: remove it or use confluent-kafka"
            raise KafkaConfigError(msg)
        else:
            properties.append((name, _text(value)))
    return properties, callbacks


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error_cb(error_cb: Callable[[KafkaError], Any]) -> Callable[[int, str], None]:
    def call(code: int, reason: str) -> None:
        error_cb(KafkaError(code, reason))

    return call


def _log_cb(logger: logging.Logger) -> Callable[[int, str, str, str], None]:
    def call(level: int, facility: str, name: str, message: str) -> None:
        logger.log(_PY_LEVELS.get(level, logging.DEBUG), "%s [%s] %s", facility, name, message)

    return call
