"""Where a Kafka partition without recovery state starts (START_POSITION): the setting, parsed and printed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

START_POSITIONS = ("earliest", "latest", "group", "timestamp:<ISO-8601 or epoch ms>")


@dataclass(frozen=True)
class StartPosition:
    """Where a partition without recovery state starts (START_POSITION)."""

    kind: str  # earliest | latest | group | timestamp
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        if self.kind != "timestamp" or self.timestamp_ms is None:
            return self.kind
        when = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return f"timestamp:{when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"

    @classmethod
    def parse(cls, text: str) -> StartPosition:
        """`earliest`, `latest`, `group`, `timestamp:2026-11-25T06:00:00Z` or `timestamp:1795586400000`."""
        kind, colon, when = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind in ("earliest", "latest", "group") and not colon:
            return cls(kind)
        if kind != "timestamp":
            msg = f"unknown start position {text!r}: use one of {', '.join(START_POSITIONS)}"
            raise ValueError(msg)
        when = when.strip()
        if when.isdigit():
            return cls("timestamp", int(when))
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            msg = f"{when!r} is neither an ISO-8601 time nor epoch milliseconds: e.g. timestamp:2026-11-25T06:00:00Z"
            raise ValueError(msg) from None
        if moment.tzinfo is None:
            msg = f"{when!r} has no time zone: add Z or an offset, e.g. {when}Z"
            raise ValueError(msg)
        millis = int(moment.timestamp() * 1000)
        if millis < 0:
            msg = f"{when!r} is before 1970: Kafka timestamps start at the epoch"
            raise ValueError(msg)
        return cls("timestamp", millis)


EARLIEST = StartPosition("earliest")
