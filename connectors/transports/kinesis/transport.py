"""Kinesis Data Streams as a job's transport (see contract.py): streams in, streams out.

With TRANSPORT=kinesis the jobs' stream settings (IMPRESSIONS_TOPIC, CREATED_TOPIC, ...)
name Kinesis streams. Each input stream is read by one source partition (source.py
says why), but event time is tracked per shard, as Flink does: the job's batch step
sees each shard as its own input partition `<stream>/<shardId>`, with its own state
(lateness is judged against the shard's own progress), and the watermark is the
minimum over shards. A stream partition reads a whole shard's backlog in a few calls;
one watermark per stream would make every other shard's records late.

Outputs go through sink.py: each record once as a reader sees the stream, across
crashes and replays, except for what its module doc lists (a zombie writer, a call still
in flight after its answer was lost); each record's data carries its id (`outputId`),
by which a reader can drop a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import bytewax.operators as op
from bytewax.dataflow import Stream

from connectors.transports.contract import BatchStep, OutputRecord, RecordBatch, TransportUnavailable
from connectors.transports.kinesis.proxy import KinesisUnavailable, check_streams, kinesis_client, list_shards
from connectors.transports.kinesis.settings import KinesisSettings
from connectors.transports.kinesis.sink import KinesisSink
from connectors.transports.kinesis.source import StatefulKinesisSource

_STREAM_SETTINGS = "the job's stream settings (e.g. IMPRESSIONS_TOPIC, CREATED_TOPIC)"


@dataclass(frozen=True)
class KinesisTransport:
    partitions_fixed: ClassVar[bool] = False  # resharding adds shards while it runs
    settings: KinesisSettings
    job: str = ""  # named in the sinks' log lines
    sink_namespace: str = ""  # the recovery store's run namespace (recovery_store.Resume)
    output_partitions: int = 4  # sink partitions per output stream; keep it across resumes

    def check(self, read: list[str], write: list[str]) -> None:
        try:
            check_streams(self.settings, [*read, *write], _STREAM_SETTINGS)
        except KinesisUnavailable as exc:
            raise TransportUnavailable(str(exc)) from None

    def partitions(self, streams: list[str]) -> list[str]:
        """The shards known at start; shards made later by resharding join when they first report."""
        client = kinesis_client(self.settings.endpoint_url, self.settings.region, max_attempts=3)
        return [f"{stream}/{shard['ShardId']}" for stream in streams for shard in list_shards(client, stream)]

    def source(self, streams: list[str], step: BatchStep, initial_state: Any) -> StatefulKinesisSource:
        def per_shard(stream: str, batch: RecordBatch, states: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
            shard = str(batch.partition)  # one GetRecords call: one shard
            items, state = step(f"{stream}/{shard}", batch, states.get(shard, initial_state))
            return items, {**states, shard: state}

        return StatefulKinesisSource.from_settings(self.settings, per_shard, {}, streams, _STREAM_SETTINGS)

    def max_record_bytes(self, stream: str) -> int:
        return KinesisSink.max_record_bytes()

    def write(self, step_id: str, records: Stream[OutputRecord], stream: str) -> None:
        # Keys are booking ids, movie ids or `stream:shard:sequence`: UTF-8 by the input rules.
        keyed = op.key_on(f"{step_id}_key", records, lambda r: r.key.decode())
        sink = KinesisSink.from_settings(
            self.settings, stream, partitions=self.output_partitions, namespace=self.sink_namespace, job=self.job
        )
        op.output(step_id, keyed, sink)
