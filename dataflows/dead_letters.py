"""Records for events the dataflows cannot use: invalid input and late arrivals."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any


def _raw_fields(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {"raw": None, "rawEncoding": None}
    try:
        return {"raw": raw.decode("utf-8"), "rawEncoding": "utf-8"}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode("ascii"), "rawEncoding": "base64"}


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a message was read; also the dead-letter record's Kafka key, for de-duplication."""

    topic: str | None
    partition: int | None
    offset: int | None

    def key(self) -> bytes:
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    def fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid input message and the reason it was rejected."""

    error: str
    position: SourcePosition
    raw: bytes | None

    def to_json(self) -> bytes:
        return json.dumps({"error": self.error, **self.position.fields(), **_raw_fields(self.raw)}).encode()


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
        return json.dumps(
            {
                "reason": f"window [{self.window_start}, {self.window_end}) closed at watermark {self.watermark}",
                **self.position.fields(),
                "timestamp": self.timestamp,
                "watermark": self.watermark,
                "windowStart": self.window_start,
                "windowEnd": self.window_end,
                **_raw_fields(self.raw),
            }
        ).encode()
