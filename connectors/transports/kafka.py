"""Kafka as a job's transport (see connectors/transports/contract.py): topics in, topics out.

Outputs are exactly once for `read_committed` readers: connectors/transports/kafka_sink.py
says how, what readers must set, and how transaction.timeout.ms relates to the epoch interval."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Stream

from connectors.engine import list_parts_quietly
from connectors.transports.contract import BatchStep, OutputRecord, TransportUnavailable
from connectors.transports.kafka_client import KafkaClientConfig
from connectors.transports.kafka_control import PRODUCER_MESSAGE_MAX_BYTES, record_limit, topic_max_message_bytes
from connectors.transports.kafka_sink import KafkaTxSink, routing_key
from connectors.transports.kafka_source import StatefulKafkaSource
from connectors.transports.kafka_start_position import StartPosition
from connectors.transports.kafka_startup_check import KafkaUnavailable, check_and_describe
from connectors.transports.progress import BoundedProgress

# Large fetches, and a prefetch queue deep enough that librdkafka's thread fetches and
# parses while the job works: its defaults fetch little at a time and keep a Python
# consumer at a fraction of what it can read (make bench, raw consume). Bounded memory,
# per input partition (each has its own consumer): 400,000 records or 32 MiB of payload,
# whichever comes first. librdkafka keeps about 150 bytes per record beside the payload:
# with small records, 400 K records is about 80 MB resident. Measured (make bench): 200 K
# left the seed backfill ~10 % slower; 1 M took the high-cardinality run to 880 MB peak.
# Fetches of 1 MB a partition: librdkafka hands out none of a response's records before it
# has parsed all of it, so 10 MB fetches kept a start waiting ~200 ms for its first batch
# (~30 ms at 1 MB); the deep queue keeps the job fed, in batches of the same size.
# A partition whose queue reached those bounds had its next fetch put off by
# fetch.queue.backoff.ms (librdkafka's default: 1 s), long after the job had drained the
# queue: in a backlog the job sat idle for up to a second at a time (a 1 M-record seed run:
# 2.2 s, 1.6 s with 10 ms; python -m bench.timeline). At 10 ms the queue is looked at again
# soon after it drains; no request goes to the broker while it is still full.
CONSUMER_DEFAULTS = {
    "fetch.queue.backoff.ms": "10",
    "fetch.min.bytes": "1000000",
    "fetch.wait.max.ms": "100",
    "max.partition.fetch.bytes": "1000000",
    "queued.min.messages": "400000",
    "queued.max.messages.kbytes": "32768",
}
# A bounded run's consumers: the broker holds a fetch that has less than fetch.min.bytes to
# give for up to fetch.wait.max.ms, so a partition's last records and its end (librdkafka's
# EOF comes with the first empty answer) each waited 100 ms, and a small partition's first
# batch too: a tenth of a second twice per run, whatever its size. A bounded run reads what
# is already there (its answers fill up at once), so the wait only ever delays its end.
BOUNDED_CONSUMER_DEFAULTS = {"fetch.wait.max.ms": "10"}
# Every client of the job (checks, listings, consumers, producers). librdkafka waits half of
# reconnect.backoff.ms (its default: 100 ms) before connecting to the broker its bootstrap
# answer names, so each new client took about 50 ms to its first answer, and a start makes
# about six of them one after another; at 10 ms, about 12 ms. Backoff after a failure still
# doubles up to reconnect.backoff.max.ms.
CLIENT_DEFAULTS = {"reconnect.backoff.ms": "10"}


def partition_names(streams: list[str], listed: Mapping[str, list[int]]) -> list[str]:
    """bytewax's KafkaSource partition names (`<partition>-<topic>`), from a listing."""
    return [f"{partition}-{stream}" for stream in streams for partition in listed[stream]]


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
    job: str = ""  # part of every output transactional.id
    sink_namespace: str = ""  # the recovery store's: output partitions without state start a run in it
    output_partitions: int = 4  # sink partitions (producers, one transaction each per epoch) per output topic
    native_reader: bool = False  # KAFKA_READER=native: partitions read by kafka_native.py

    @functools.cached_property
    def client_config(self) -> dict[str, Any]:
        return {**CLIENT_DEFAULTS, **self.client.client_config()}

    @functools.cached_property
    def _listed(self) -> dict[str, list[int]]:
        return {}  # topic -> its partitions, as the start-up check listed them

    def check(self, read: list[str], write: list[str]) -> None:
        """The broker answers and the topics exist; also what the flow needs from the broker
        next (partitions, output record limits), so that it is asked once, by one client."""
        try:
            checked = check_and_describe(
                self.brokers, self.client_config, [*read, *write], limits_of=write, client=self.client
            )
        except KafkaUnavailable as exc:
            raise TransportUnavailable(str(exc)) from None
        self._listed.update(checked.partitions)
        for stream, topic_max in checked.max_message_bytes.items():
            self._record_limits[stream] = self._record_limit(topic_max)

    def _kafka_source(self, topics: list[str]) -> KafkaSource:
        return KafkaSource(
            self.brokers,
            topics,
            tail=not self.bounded,
            add_config={
                **CONSUMER_DEFAULTS,
                **(BOUNDED_CONSUMER_DEFAULTS if self.bounded else {}),
                **self.client_config,
                "group.id": self.consumer_group,
            },
            batch_size=self.batch_size,
            raise_on_errors=False,
        )

    def _listed_parts(self, streams: list[str]) -> list[str] | None:
        return partition_names(streams, self._listed) if all(s in self._listed for s in streams) else None

    def partitions(self, streams: list[str]) -> list[str]:
        listed = self._listed_parts(streams)
        return listed if listed is not None else list_parts_quietly(self._kafka_source(streams))

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
            native=self.native_reader,
            listed=self._listed_parts(streams),
        )

    @functools.cached_property
    def _record_limits(self) -> dict[str, int]:
        return {}

    def max_record_bytes(self, stream: str) -> int:
        if stream not in self._record_limits:
            topic_max = topic_max_message_bytes(",".join(self.brokers), self.client_config, stream)
            self._record_limits[stream] = self._record_limit(topic_max)
        return self._record_limits[stream]

    def _record_limit(self, topic_max: int) -> int:
        return record_limit(topic_max, int(self.client_config.get("message.max.bytes", PRODUCER_MESSAGE_MAX_BYTES)))

    def write(self, step_id: str, records: Stream[OutputRecord], stream: str) -> None:
        keyed = op.map(f"{step_id}_route", records, lambda record: (routing_key(record), record))
        sink = KafkaTxSink(
            self.brokers,
            stream,
            self.client_config,
            job=self.job,
            namespace=self.sink_namespace,
            partitions=self.output_partitions,
        )
        op.output(step_id, keyed, sink)
