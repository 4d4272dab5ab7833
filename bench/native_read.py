"""Read-only: the native partition reader (connectors/transports/kafka_native.py) against
confluent-kafka's `consume(batch)` loop building `[m.value() ...]`, on the same topic, runs
interleaved, a reader per partition polled in turn (as bytewax reads), the jobs' fetch settings.

    python -m bench.native_read --topic bench-high-2000000 --runs 3   # make up; topic from make bench
    python -m bench.native_read --own-broker --events 2000000 --runs 3  # a broker of its own, filled once

Reported per side: messages/s (wall) and the main thread's CPU per message (time.thread_time:
what the reading costs the worker thread; librdkafka's own threads fetch and parse beside it).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench.ceiling import FETCH_SWEEP, JOBS_FETCH_NAME, native_read_all, reader_settings
from bench.stack import BROKERS, ROOT, Workload
from connectors.transports.kafka_native import OFFSET_BEGINNING, unavailable
from dataflows.skeleton import GC_THRESHOLDS
from devstack.kafka import KafkaBroker, create_topics
from devstack.processes import free_port
from producers.movie_impressions import generate, produce

FETCH = FETCH_SWEEP[JOBS_FETCH_NAME]


def _config(brokers: str) -> dict:
    return reader_settings(brokers, FETCH)


def _partitions(brokers: str, topic: str) -> list[int]:
    probe = Consumer(_config(brokers))
    try:
        return sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        probe.close()


def read_confluent(brokers: str, topic: str, size: int) -> tuple[int, float, float]:
    """(messages, wall s, main-thread CPU s) reading every partition to its end."""
    consumers = []
    for p in _partitions(brokers, topic):
        consumer = Consumer(_config(brokers))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
        consumers.append(consumer)
    count = 0
    wall, cpu = time.perf_counter(), time.thread_time()
    reading = list(consumers)
    while reading:
        for consumer in list(reading):
            messages = consumer.consume(size, 0.001)
            values = [m.value() for m in messages if m.error() is None]
            count += len(values)
            if any(m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF for m in messages):
                reading.remove(consumer)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    for consumer in consumers:
        consumer.close()
    return count, wall, cpu


def read_native(brokers: str, topic: str, size: int) -> tuple[int, float, float]:
    return native_read_all(brokers, topic, FETCH, size)


def fill(brokers: str, events: int) -> str:
    workload = Workload("high", events, 200, 5_000)
    create_topics(brokers, [workload.topic], partitions=2)
    print(f"loading {events:,} events into {workload.topic} ...", file=sys.stderr, flush=True)
    produce(generate(workload.shape()), brokers, workload.topic)
    return workload.topic


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.native_read", description=__doc__)
    parser.add_argument("--topic", help="an existing topic (default: the bench's high workload of --events)")
    parser.add_argument("--brokers", default=BROKERS)
    parser.add_argument("--own-broker", action="store_true", help="start a broker of its own and fill the topic")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--size", type=int, default=50_000, help="messages per call (the jobs' KAFKA_BATCH_SIZE)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    missing = unavailable()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    gc.set_threshold(*GC_THRESHOLDS)  # as the job runs
    broker, data = None, None
    try:
        if args.own_broker:
            data = Path(tempfile.mkdtemp(prefix="native-read-"))
            broker = KafkaBroker(free_port(), free_port(), data, ROOT / ".cache", heap="1g")
            broker.start()
            args.brokers = broker.bootstrap
        topic = args.topic or fill(args.brokers, args.events)
        sides = {"confluent-kafka consume + [m.value()]": read_confluent, "native reader": read_native}
        results: dict[str, list[tuple[int, float, float]]] = {side: [] for side in sides}
        for i in range(args.runs):
            for side, read in sides.items():
                count, wall, cpu = read(args.brokers, topic, args.size)
                results[side].append((count, wall, cpu))
                print(
                    f"run {i + 1} {side}: {count:,} msgs, {count / wall:,.0f} msg/s, "
                    f"main-thread CPU {cpu / count * 1e6:.2f} us/msg",
                    flush=True,
                )
        for side, runs in results.items():
            rate = statistics.median(c / w for c, w, _ in runs)
            cpu = statistics.median(u / c * 1e6 for c, _, u in runs)
            print(f"{side}: median {rate:,.0f} msg/s, main-thread CPU {cpu:.2f} us/msg ({topic}, {args.size:,}/call)")
    finally:
        if broker is not None:
            broker.stop(grace=0)
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
