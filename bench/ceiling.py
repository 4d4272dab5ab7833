"""The read and compute ceilings of `make bench`: what reading a topic and doing nothing
else costs, swept over fetch settings, messages per call and consumer layouts, for
confluent-kafka's consumer and the native reader; and polars' decode and group-by in memory.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
from collections.abc import Callable
from functools import partial

import polars as pl
from confluent_kafka import Consumer, TopicPartition

from bench.stack import BROKERS, medians
from connectors.transports import kafka_native
from connectors.transports.kafka import CONSUMER_DEFAULTS
from connectors.transports.kafka_native import OFFSET_BEGINNING, NativePartitionReader
from dataflows.skeleton import GC_THRESHOLDS

# The ceiling is the best of these (librdkafka's defaults fetch little at a time). Each
# runs with the job's garbage-collector tuning and with the job's consume size too
# (`CONSUME_SIZES`), so nothing the job gains from either flatters it against the ceiling.
JOBS_FETCH_NAME = "1 MB fetches, 400 K / 32 MiB queue (the jobs' defaults)"
FETCH_SWEEP: dict[str, dict[str, int]] = {
    "defaults": {},
    JOBS_FETCH_NAME: {name: int(value) for name, value in CONSUMER_DEFAULTS.items()},  # whatever the jobs use
    "1 MB fetches, 1 M / 1 GB queue": {
        "fetch.min.bytes": 1_000_000,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 10_000_000,
        "queued.min.messages": 1_000_000,
        "queued.max.messages.kbytes": 1_000_000,
    },
}


CONSUME_SIZES = (10_000, 50_000)  # messages per consume() call; 50,000 is the jobs' KAFKA_BATCH_SIZE
# One consumer for the topic, or one per partition polled in turn, as bytewax's
# KafkaSource reads: each consumer is its own librdkafka instance, whose own thread
# fetches and parses, so per partition reads about twice as fast on two cores.
LAYOUTS = ("one consumer", "a consumer per partition")


def raw_consume(topic: str, config: dict | None = None, size: int = 10_000, layout: str = LAYOUTS[1]) -> float:
    """The I/O ceiling: confluent-kafka batch consume() of the whole topic, no work."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # as the job runs (dataflows/skeleton.py)
    try:
        return _raw_consume(topic, config, size, per_partition=layout == LAYOUTS[1])
    finally:
        gc.set_threshold(*before)


def reader_settings(brokers: str, config: dict | None = None) -> dict:
    """A whole-topic reader's consumer settings: a group of its own, the end reported, no commits."""
    return {
        "bootstrap.servers": brokers,
        "group.id": f"bench-{uuid.uuid4()}",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
        **(config or {}),
    }


def _raw_consume(topic: str, config: dict | None, size: int, per_partition: bool) -> float:
    settings = reader_settings(BROKERS, config)
    probe = Consumer(settings)
    parts = [TopicPartition(topic, p, 0) for p in probe.list_topics(topic, timeout=10).topics[topic].partitions]
    probe.close()
    consumers = [Consumer(settings) for _ in parts] if per_partition else [Consumer(settings)]
    for i, consumer in enumerate(consumers):
        consumer.assign([parts[i]] if per_partition else parts)
    started, count, eof = time.perf_counter(), 0, set()
    reading = list(consumers)
    while reading:
        for consumer in list(reading):
            for msg in consumer.consume(size, 0.001 if per_partition else 1.0):
                if msg.error() is None:
                    count += 1
                else:
                    eof.add(msg.partition())
            if per_partition and eof & {tp.partition for tp in consumer.assignment()}:
                reading.remove(consumer)
            elif not per_partition and len(eof) == len(parts):
                reading.remove(consumer)
    elapsed = time.perf_counter() - started
    for consumer in consumers:
        consumer.close()
    return count / elapsed


def native_read_all(brokers: str, topic: str, config: dict, size: int) -> tuple[int, float, float]:
    """(messages, wall s, main-thread CPU s): the native reader (KAFKA_READER=native) over the
    whole topic, a reader per partition polled in turn, no work."""
    settings = reader_settings(brokers, config)
    probe = Consumer(settings)
    parts = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    probe.close()
    readers = [NativePartitionReader(settings, topic, p, OFFSET_BEGINNING) for p in parts]
    count, reading = 0, list(readers)
    wall, cpu = time.perf_counter(), time.thread_time()
    while reading:
        for reader in list(reading):
            batch = reader.read(size, 0.001)
            count += len(batch)
            if batch.reached_end:
                reading.remove(reader)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    for reader in readers:
        reader.close()
    return count, wall, cpu


def native_consume(topic: str, config: dict, size: int) -> float:
    count, wall, _ = native_read_all(BROKERS, topic, config, size)
    return count / wall


def ceiling_readers(topic: str) -> dict[str, Callable[[], float]]:
    """Every reader of the sweep, by label: each call reads the whole topic and returns messages/s."""
    readers: dict[str, Callable[[], float]] = {
        f"{name}, {size:,} per call, {layout}": partial(raw_consume, topic, cfg, size, layout)
        for name, cfg in FETCH_SWEEP.items()
        for size in CONSUME_SIZES
        for layout in LAYOUTS
    }
    if kafka_native.unavailable() is None:
        for name, cfg in FETCH_SWEEP.items():
            for size in CONSUME_SIZES:
                readers[f"{name}, {size:,} per call, native reader per partition"] = partial(
                    native_consume, topic, cfg, size
                )
    return readers


def raw_consume_ceilings(topic: str, runs: int) -> tuple[dict, Callable[[], float]]:
    """Raw consume with librdkafka's defaults, and the best of the sweep, confluent-kafka's and the
    native reader's (when built): the ceiling is the fastest reader measured. Also that reader,
    to measure it again beside the job (`interleaved`)."""
    readers = ceiling_readers(topic)
    figures = {label: statistics.median(read() for _ in range(runs)) for label, read in readers.items()}
    best = max(figures, key=figures.__getitem__)
    return {
        "raw_consume_defaults": {"events_per_s": figures[f"defaults, {CONSUME_SIZES[0]:,} per call, {LAYOUTS[0]}"]},
        "raw_consume": {"events_per_s": figures[best], "fetch_settings": best, "sweep": figures},
    }, readers[best]


def interleaved(runs: int, ceiling: Callable[[], float], job: Callable[[], dict]) -> tuple[float, dict]:
    """The ceiling's reader and the job run by turns, `runs` times each, so that both see the
    machine alike: (the ceiling's median messages/s, the job's medians as `median_of`'s)."""
    rates, results = [], []
    for _ in range(runs):
        rates.append(ceiling())
        results.append(job())
    return statistics.median(rates), medians(results)


def read_all(topic: str) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": BROKERS, "group.id": f"bench-{uuid.uuid4()}", "enable.partition.eof": True}
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    values, eof = [], set()
    while len(eof) < len(parts):
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                values.append(msg.value())
            else:
                eof.add(msg.partition())
    consumer.close()
    return values


def polars_ceiling(values: list[bytes]) -> float:
    """The compute ceiling: polars NDJSON decode + the window group-by, in memory."""
    payload = b"\n".join(values)
    started = time.perf_counter()
    frame = pl.read_ndjson(payload, schema={"movieId": pl.String, "userId": pl.String, "timestamp": pl.Int64})
    frame.group_by("movieId", "userId", (pl.col("timestamp") // 900_000).alias("window")).agg(
        pl.len(), pl.col("timestamp").max()
    )
    return len(values) / (time.perf_counter() - started)
