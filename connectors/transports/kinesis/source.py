"""A bytewax source for Kinesis Data Streams with a per-stream stateful step, like StatefulKafkaSource.

Use::

    settings = KinesisSettings.from_env(os.environ)
    check_streams(settings)                      # fail fast with one line (missing stream, no endpoint)
    source = StatefulKinesisSource.from_settings(settings, step, initial_state)
    flow = Dataflow("job"); stream = op.input("in", flow, source)

`step(part_id, batch, state) -> (items, state)` is the batch step of
connectors/transports/kafka_source.py: `part_id` is the stream name, `batch` holds the
records of one GetRecords call (one shard, in sequence-number order) as a `RecordBatch`
(record.py, connectors/transports/batch.py). The step's state is snapshotted together with the positions of all shards
of the stream, so after a resume both describe the same point.

Why one partition per stream: bytewax's partition list is fixed, Kinesis' shard list is
not. So ONE bytewax partition per stream reads all the stream's shards itself
(reader.py), and a shard is read only once its parents were read to SHARD_END
(tracker.py): for every partition key the step sees records in the order they were
written, across SplitShard, MergeShards and UpdateShardCount, with no restart, and
merges of parents another reader would own need no coordination. The limit: one stream
is read by one bytewax worker (several streams spread over workers). A worker issues
GetRecords calls one after another, so its throughput is bounded by round trips: about
1/RTT calls per second for the whole stream (~50/s at 20 ms), each up to `max_records`
records, i.e. it keeps about ten busy shards at Kinesis' 5 calls/s (idle shards cost
1/`idle_poll_seconds` calls/s). Locally it read 20,000 small records from 4 shards in
2 s. For more, split the data over several streams. A step that needs per-shard state (a
per-partition watermark, say) can key its state by `batch.partition` (the shard id): the
state passed in is per stream.

Positions: per shard, the last sequence number read (resumed AFTER_SEQUENCE_NUMBER);
shards read to SHARD_END are remembered until ListShards no longer lists them. A fresh
start reads from TRIM_HORIZON, or LATEST / AT_TIMESTAMP (`start_position`); shards that
appear later are always read from TRIM_HORIZON. LATEST is remembered as "AT_TIMESTAMP
the start time", so a resume before a shard's first record does not skip what arrived
in between. Not supported: enhanced fan-out (SubscribeToShard), KPL-aggregated records
(they arrive as one aggregated record each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic

from bytewax.inputs import FixedPartitionedSource

from connectors.transports.kinesis.proxy import BotoKinesisProxy, kinesis_client
from connectors.transports.kinesis.reader import BatchStep, ReadOptions, S, StreamReader, X
from connectors.transports.kinesis.settings import (
    MAX_GET_RECORDS,
    MIN_CALL_INTERVAL,
    START_POSITIONS,
    KinesisConfigError,
    KinesisSettings,
)
from connectors.transports.kinesis.tracker import Positions


class StatefulKinesisSource(FixedPartitionedSource[X, tuple[Positions, S]], Generic[X, S]):
    """Reads Kinesis `streams` and runs `step` on every GetRecords batch of every shard, keeping its state.

    One bytewax partition per stream (see the module doc for why and the limits).
    """

    def __init__(
        self,
        streams: Sequence[str],
        step: BatchStep,
        initial_state: S,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        start_position: str = "TRIM_HORIZON",
        start_timestamp: datetime | None = None,
        bounded: bool = False,
        discovery_seconds: float = 10.0,
        idle_poll_seconds: float = 1.0,
        max_records: int = MAX_GET_RECORDS,
        client_factory: Callable[[], Any] | None = None,
        streams_setting: str = "KINESIS_STREAMS",
    ) -> None:
        """`endpoint_url` None: AWS itself. `client_factory` builds each partition's boto3 client (tests wrap it).

        `streams_setting` is the setting named in the error for a missing stream.
        """
        if start_position not in START_POSITIONS:
            msg = f"start_position {start_position!r} is not one of {', '.join(START_POSITIONS)}"
            raise KinesisConfigError(msg)
        if start_position == "AT_TIMESTAMP" and start_timestamp is None:
            raise KinesisConfigError("start_position AT_TIMESTAMP needs start_timestamp")
        if len(set(streams)) != len(streams) or not streams:
            raise KinesisConfigError(f"streams must be distinct and non-empty, got {list(streams)}")
        self._streams = list(streams)
        self._step = step
        self._initial_state = initial_state
        ts_ms = int(start_timestamp.timestamp() * 1000) if start_timestamp is not None else None
        self._options = ReadOptions(
            start=(start_position, ts_ms),
            bounded=bounded,
            discovery_seconds=discovery_seconds,
            idle_poll_seconds=max(idle_poll_seconds, MIN_CALL_INTERVAL),
            max_records=max(1, min(max_records, MAX_GET_RECORDS)),
            endpoint_url=endpoint_url,
            region=region,
            streams_setting=streams_setting,
        )
        self._client_factory = client_factory or (lambda: kinesis_client(endpoint_url, region))

    @classmethod
    def from_settings(
        cls,
        settings: KinesisSettings,
        step: BatchStep,
        initial_state: S,
        streams: Sequence[str] | None = None,
        streams_setting: str = "KINESIS_STREAMS",
    ) -> StatefulKinesisSource:
        return cls(
            list(streams) if streams is not None else list(settings.streams),
            step,
            initial_state,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            start_position=settings.start_position,
            start_timestamp=settings.start_timestamp,
            bounded=settings.bounded,
            discovery_seconds=settings.discovery_seconds,
            idle_poll_seconds=settings.idle_poll_seconds,
            max_records=settings.max_records,
            streams_setting=streams_setting,
        )

    def list_parts(self) -> list[str]:
        return list(self._streams)

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[Positions, S] | None) -> StreamReader[X, S]:
        positions, state = resume_state if resume_state is not None else (None, self._initial_state)
        proxy = BotoKinesisProxy(self._client_factory())
        return StreamReader(self._options, for_part, proxy, self._step, positions, state)
