"""Kafka as a job's transport (see connectors/transports/contract.py): topics in, topics out."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Stream

from connectors.engine import list_parts_quietly
from connectors.transports.contract import BatchStep, OutputRecord, TransportUnavailable
from connectors.transports.kafka_client import KafkaClientConfig
from connectors.transports.kafka_source import KafkaUnavailable, StartPosition, StatefulKafkaSource, check_topics
from connectors.transports.progress import BoundedProgress

# Large fetches, and a prefetch queue deep enough that librdkafka's thread fetches and
# parses while the job works: its defaults fetch little at a time and keep a Python
# consumer at a fraction of what it can read (make bench, raw consume). Bounded memory,
# per input partition (each has its own consumer): 400,000 records or 32 MiB of payload,
# whichever comes first. librdkafka keeps about 150 bytes per record beside the payload:
# with small records, 400 K records is about 80 MB resident. Measured (make bench): 200 K
# left the seed backfill ~10 % slower; 1 M took the high-cardinality run to 880 MB peak.
CONSUMER_DEFAULTS = {
    "fetch.min.bytes": "1000000",
    "fetch.wait.max.ms": "100",
    "max.partition.fetch.bytes": "10000000",
    "queued.min.messages": "400000",
    "queued.max.messages.kbytes": "32768",
}


@dataclass(frozen=True)
class KafkaTransport:
    partitions_fixed: ClassVar[bool] = True  # a partition added while running is read after a restart
    brokers: list[str]
    consumer_group: str  # offsets are committed here at every snapshot, for lag tools only
    bounded: bool  # stop at the end of every partition as it was at start
    batch_size: int
    start: StartPosition  # where partitions without recovery state begin
    stop_at_ms: int | None  # bounded runs: stop before the first record this late (Kafka timestamp)
    partition_check_s: float = 60.0  # how often partitions added while running are looked for
    # librdkafka properties (security etc.) and the settings they came from; may hold secrets: never log.
    client: KafkaClientConfig = field(default_factory=KafkaClientConfig, repr=False)

    @functools.cached_property
    def client_config(self) -> dict[str, Any]:
        return self.client.client_config()

    def check(self, read: list[str], write: list[str]) -> None:
        try:
            check_topics(self.brokers, self.client_config, [*read, *write], client=self.client)
        except KafkaUnavailable as exc:
            raise TransportUnavailable(str(exc)) from None

    def _kafka_source(self, topics: list[str]) -> KafkaSource:
        return KafkaSource(
            self.brokers,
            topics,
            tail=not self.bounded,
            add_config={**CONSUMER_DEFAULTS, **self.client_config, "group.id": self.consumer_group},
            batch_size=self.batch_size,
            raise_on_errors=False,
        )

    def partitions(self, streams: list[str]) -> list[str]:
        return list_parts_quietly(self._kafka_source(streams))

    def source(self, streams: list[str], step: BatchStep, initial_state: Any) -> StatefulKafkaSource:
        return StatefulKafkaSource(
            self._kafka_source(streams),
            step,
            initial_state,
            commit_offsets=True,
            start=self.start,
            stop_at_ms=self.stop_at_ms,
            progress=BoundedProgress() if self.bounded else None,
            partition_check_s=self.partition_check_s,
        )

    def max_record_bytes(self, stream: str) -> int:
        return 1_000_000

    def write(self, step_id: str, records: Stream[OutputRecord], stream: str) -> None:
        messages = op.map(f"{step_id}_message", records, lambda r: KafkaSinkMessage(r.key, r.value))
        op.output(step_id, messages, KafkaSink(self.brokers, stream, self.client_config))
