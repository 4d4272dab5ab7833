"""Records/s through the transactional Kafka sink against bytewax's KafkaSink (flush per batch), same run.

    .venv/bin/python -m bench.kafka_sink                      # starts a broker of its own
    .venv/bin/python -m bench.kafka_sink --bootstrap 127.0.0.1:9092 --records 100000 --runs 3

One sink partition, ~200-byte records, 2 s epochs, a recovery store (so snapshot() runs
at every epoch, as in the jobs). Each run is a fresh topic; the two sinks alternate and
the median of --runs is printed. The transactional sink's output is then read back
read_committed and must hold every record once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Consumer, TopicPartition

from connectors.transports.contract import OutputRecord
from connectors.transports.kafka_sink import KafkaTxSink, routing_key
from devstack.kafka import KafkaBroker, create_topics
from devstack.processes import free_port

EPOCH = timedelta(seconds=2)


def make_records(n: int) -> list[OutputRecord]:
    pad = "x" * 180
    return [
        OutputRecord(f"in:0:{i}", f"key-{i % 1000}".encode(), f'{{"i":{i},"p":"{pad}"}}'.encode()) for i in range(n)
    ]


def old_flow(bootstrap: str, topic: str, records: list[OutputRecord]) -> Dataflow:
    flow = Dataflow("old")
    stream = op.input("in", flow, TestingSource(records, batch_size=1000))
    messages = op.map("message", stream, lambda r: KafkaSinkMessage(r.key, r.value))
    op.output("out", messages, KafkaSink([bootstrap], topic))
    return flow


def new_flow(bootstrap: str, topic: str, records: list[OutputRecord]) -> Dataflow:
    flow = Dataflow("new")
    stream = op.input("in", flow, TestingSource(records, batch_size=1000))
    keyed = op.map("route", stream, lambda r: (routing_key(r), r))
    namespace = f"20250101T000000Z-{uuid.uuid4().hex[:6]}"
    op.output("out", keyed, KafkaTxSink([bootstrap], topic, job="bench", namespace=namespace, partitions=1))
    return flow


def timed(
    build: Callable[[str, str, list[OutputRecord]], Dataflow], bootstrap: str, records: list[OutputRecord]
) -> tuple[float, str]:
    topic = f"bench-sink-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=1)
    flow = build(bootstrap, topic, records)
    with tempfile.TemporaryDirectory() as store:
        init_db_dir(Path(store), 1)
        start = time.perf_counter()
        run_main(flow, epoch_interval=EPOCH, recovery_config=RecoveryConfig(store))
        return len(records) / (time.perf_counter() - start), topic


def committed_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"b-{uuid.uuid4()}", "isolation.level": "read_committed"}
    )
    end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    while consumer.position([TopicPartition(topic, 0)])[0].offset < end:
        seen += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
    consumer.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="a broker to use (default: start one)")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = KafkaBroker(free_port(), free_port(), Path(tempfile.mkdtemp()) / "kafka", Path(".cache"))
        broker.start()
        bootstrap = broker.bootstrap
    try:
        records = make_records(args.records)
        timed(new_flow, bootstrap, records[:1000])  # warm-up: the broker's transaction log
        rates: dict[str, list[float]] = {"KafkaSink (flush per batch)": [], "KafkaTxSink (transactions)": []}
        for _ in range(args.runs):
            rates["KafkaSink (flush per batch)"].append(timed(old_flow, bootstrap, records)[0])
            rate, topic = timed(new_flow, bootstrap, records)
            rates["KafkaTxSink (transactions)"].append(rate)
            assert committed_count(bootstrap, topic) == len(records), "the transactional sink lost or repeated records"
        size = len(records[0].key) + len(records[0].value)
        print(f"{args.records} records of ~{size} bytes, 1 sink partition, {EPOCH.total_seconds():g} s epochs:")
        for name, values in rates.items():
            shown = ", ".join(f"{v:,.0f}" for v in values)
            print(f"  {name:30s} median {statistics.median(values):>9,.0f} records/s  (runs: {shown})")
    finally:
        if broker is not None:
            broker.stop(grace=0)


if __name__ == "__main__":
    main()
