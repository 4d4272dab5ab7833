"""Kinesis settings, read once from the environment; defaults point at `make up`'s kinesis-local.

KINESIS_STREAMS, KINESIS_ENDPOINT_URL, AWS_REGION/AWS_DEFAULT_REGION, KINESIS_START_POSITION,
KINESIS_START_TIMESTAMP, KINESIS_DISCOVERY_SECONDS, KINESIS_IDLE_POLL_SECONDS, KINESIS_MAX_RECORDS,
BOUNDED, KINESIS_SINK_RETRY_SECONDS (the sink's retry budget, sink.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from connectors.env import Env
from connectors.errors import ConfigError

LOCAL_KINESIS = "http://127.0.0.1:4568"  # devstack's kinesis-local (python -m devstack up)
START_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
MAX_GET_RECORDS = 10_000  # Kinesis' own cap on GetRecords' Limit
MIN_CALL_INTERVAL = 0.2  # 5 GetRecords calls per second per shard


class KinesisConfigError(ConfigError):
    """A Kinesis setting is missing or wrong; the message names it and the fix."""


@dataclass(frozen=True)
class KinesisSettings:
    """Kinesis settings, read once from the environment; defaults point at `make up`'s kinesis-local."""

    streams: tuple[str, ...] = ("movie-impressions",)
    endpoint_url: str | None = LOCAL_KINESIS  # None: AWS's own endpoint for the region
    region: str = "us-east-1"
    start_position: str = "TRIM_HORIZON"
    start_timestamp: datetime | None = None  # for AT_TIMESTAMP
    discovery_seconds: float = 10.0
    idle_poll_seconds: float = 1.0
    max_records: int = MAX_GET_RECORDS
    bounded: bool = False
    sink_retry_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KinesisSettings:
        streams = tuple(s.strip() for s in env.get("KINESIS_STREAMS", ",".join(cls.streams)).split(",") if s.strip())
        if not streams:
            raise KinesisConfigError("KINESIS_STREAMS is empty: set it to a comma-separated list of stream names")
        endpoint = env.get("KINESIS_ENDPOINT_URL", LOCAL_KINESIS).strip() or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            msg = f"KINESIS_ENDPOINT_URL={endpoint!r} is not an http(s) URL: e.g. {LOCAL_KINESIS}, or empty for AWS"
            raise KinesisConfigError(msg)
        region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cls.region).strip()
        position = env.get("KINESIS_START_POSITION", cls.start_position).strip().upper()
        if position not in START_POSITIONS:
            msg = f"KINESIS_START_POSITION={position!r} is not supported: use one of {', '.join(START_POSITIONS)}"
            raise KinesisConfigError(msg)
        timestamp = _timestamp(env.get("KINESIS_START_TIMESTAMP", "").strip())
        if position == "AT_TIMESTAMP" and timestamp is None:
            msg = (
                "KINESIS_START_POSITION=AT_TIMESTAMP needs KINESIS_START_TIMESTAMP (ISO 8601 with offset, or epoch ms)"
            )
            raise KinesisConfigError(msg)
        e = Env(env, KinesisConfigError)
        max_records = int(e.number("KINESIS_MAX_RECORDS", cls.max_records, minimum=1, integer=True))
        if max_records > MAX_GET_RECORDS:
            msg = f"KINESIS_MAX_RECORDS={max_records} is above Kinesis' GetRecords limit: use 1..{MAX_GET_RECORDS}"
            raise KinesisConfigError(msg)
        bounded = e.flag("BOUNDED", False)
        return cls(
            streams=streams,
            endpoint_url=endpoint,
            region=region,
            start_position=position,
            start_timestamp=timestamp,
            discovery_seconds=e.number("KINESIS_DISCOVERY_SECONDS", cls.discovery_seconds, minimum=0.1),
            idle_poll_seconds=e.number("KINESIS_IDLE_POLL_SECONDS", cls.idle_poll_seconds, minimum=MIN_CALL_INTERVAL),
            max_records=max_records,
            bounded=bounded,
            sink_retry_seconds=e.number("KINESIS_SINK_RETRY_SECONDS", cls.sink_retry_seconds, minimum=0),
        )


def _timestamp(raw: str) -> datetime | None:
    if not raw:
        return None
    try:
        if raw.isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        msg = f"KINESIS_START_TIMESTAMP={raw!r} is not a time: use ISO 8601 with offset (2026-01-31T08:00Z) or epoch ms"
        raise KinesisConfigError(msg)
    return parsed
