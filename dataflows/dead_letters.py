"""Records for events the dataflows cannot use: invalid input and late arrivals.

The record boundary (`rejected`): whatever one input record makes the decoding, the
validation or the field extraction raise, that record becomes a dead letter and the
batch goes on. Two kinds, told apart in the record, the metrics and the log:
- "invalid": the record breaks the input rules (InvalidEvent), the producer's fault;
- "internal_error": any other exception, i.e. our own code failed on this record.
  It is dead-lettered too (the job keeps running and the record is kept for a replay
  once the bug is fixed), logged at ERROR with its traceback, and counted in
  `waxstreams_internal_errors_total`, which should page someone: see the README.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from connectors.transports.batch import RecordBatch
from dataflows.untrusted_json import InvalidEvent

log = logging.getLogger(__name__)

# A dead-letter record must fit in a Kafka message (librdkafka's default limit is
# 1,000,000 bytes): past this, the raw value is cut and its length and digest kept.
MAX_DEAD_LETTER_BYTES = 900_000
_TRUNCATED_RAW_BYTES = 64 * 1024
_LOGGED_INTERNAL_ERRORS = 20  # tracebacks per process; the counter counts them all
_internal_errors_logged = 0


def _raw_fields(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {"raw": None, "rawEncoding": None}
    try:
        return {"raw": raw.decode("utf-8"), "rawEncoding": "utf-8"}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode("ascii"), "rawEncoding": "base64"}


def _with_raw(fields: dict[str, Any], raw: bytes | None) -> bytes:
    """JSON of `fields` plus the raw value, as exact as MAX_DEAD_LETTER_BYTES allows."""
    record = json.dumps({**fields, **_raw_fields(raw)}).encode()
    if len(record) <= MAX_DEAD_LETTER_BYTES or raw is None:
        return record
    # Escapes can grow text six-fold (each NUL is "\u0000"); base64 grows it by a third.
    as_base64 = {"raw": base64.b64encode(raw).decode("ascii"), "rawEncoding": "base64"}
    record = json.dumps({**fields, **as_base64}).encode()
    if len(record) <= MAX_DEAD_LETTER_BYTES:
        return record
    cut = {
        "raw": base64.b64encode(raw[:_TRUNCATED_RAW_BYTES]).decode("ascii"),
        "rawEncoding": "base64",
        "rawTruncated": True,
        "rawBytes": len(raw),
        "rawSha256": hashlib.sha256(raw).hexdigest(),
    }
    return json.dumps({**fields, **cut}).encode()


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a message was read; also the dead-letter record's Kafka key, for de-duplication."""

    topic: str | None  # or Kinesis stream
    partition: int | str | None  # or Kinesis shard id
    offset: int | str | None  # or Kinesis sequence number

    def key(self) -> bytes:
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    def fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input message the job could not use, and why."""

    error: str
    position: SourcePosition
    raw: bytes | None
    internal: bool = False  # our code failed on it (see the module's docstring)

    def to_json(self) -> bytes:
        kind = "internal_error" if self.internal else "invalid"
        return _with_raw({"error": self.error, "kind": kind, **self.position.fields()}, self.raw)


def rejected(batch: RecordBatch, i: int, exc: Exception) -> DeadLetter:
    """The dead letter for record `i` of an input batch, whose decoding raised `exc`."""
    try:
        return _dead_letter(batch, i, exc)
    finally:
        _drop_tracebacks(exc)


def _drop_tracebacks(exc: BaseException) -> None:
    """Drop the tracebacks of `exc` and of the exceptions it was raised from or during:
    their frames (and, through f_back, their callers') keep their locals, the batch among
    them, and a decoder that lists (index, exception) pairs closes a cycle through them that
    only a full collection frees, rare in the jobs (skeleton.GC_THRESHOLDS)."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        pending += [e.__cause__, e.__context__]


def _dead_letter(batch: RecordBatch, i: int, exc: Exception) -> DeadLetter:
    position = SourcePosition(*batch.position(i))
    if isinstance(exc, InvalidEvent):
        return DeadLetter(str(exc), position, batch.value(i))
    global _internal_errors_logged
    if _internal_errors_logged < _LOGGED_INTERNAL_ERRORS:
        _internal_errors_logged += 1
        log.error("internal error on the record at %s, sent to the dead letters", position.key().decode(), exc_info=exc)
    return DeadLetter(f"internal error: {type(exc).__name__}: {exc}", position, batch.value(i), internal=True)


@dataclass(frozen=True, slots=True)
class LateEvent:
    """A valid event whose window had already closed when it arrived."""

    position: SourcePosition
    raw: bytes | None
    timestamp: int
    watermark: int
    window_start: int
    window_end: int

    def to_json(self) -> bytes:
        return _with_raw(
            {
                "reason": f"window [{self.window_start}, {self.window_end}) closed at watermark {self.watermark}",
                **self.position.fields(),
                "timestamp": self.timestamp,
                "watermark": self.watermark,
                "windowStart": self.window_start,
                "windowEnd": self.window_end,
            },
            self.raw,
        )


@dataclass(frozen=True, slots=True)
class RefusedOutput:
    """An output record its stream would refuse (over the stream's record limit), kept as a dead letter."""

    stream: str
    unit: str
    key: bytes
    value: bytes
    limit: int

    def to_json(self) -> bytes:
        size = len(self.key) + len(self.value)
        fields = {
            "error": f"a record of {size} bytes for {self.stream!r} is over its limit of {self.limit} bytes",
            "kind": "output_refused",
            "stream": self.stream,
            "unit": self.unit,
            "size": size,
            "limit": self.limit,
            "key": self.key.decode("utf-8", "backslashreplace"),
        }
        return _with_raw(fields, self.value)
