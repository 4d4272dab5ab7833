"""Where the movie-impressions job's time goes, per event: read, step, close, sink, start-up.

    python -m bench.breakdown                         # both workloads, both readers, medians of 3 (make up)
    python -m bench.breakdown --workload seed --reader confluent --runs 1

Each part runs the product's own functions on the job's topic, in this process, without bytewax:

- read: the job's read loop (`kafka_partition._read_messages`: `consume(KAFKA_BATCH_SIZE)` and
  `RecordBatch.of_messages`; native: `NativePartitionReader.read` and a `RecordBatch` of its
  columns), a reader per partition polled in turn, the jobs' consumer settings
  (`kafka.CONSUMER_DEFAULTS`). The batches are kept;
- step: the job's batch step (`skeleton.read_input`'s, around `slicing.slice_batch`: decode,
  lateness, pre-aggregation, metrics, heartbeats) on those batches in the order the job reads
  them, and the window operator's folder (`windows.fold`) on the slices;
- close: `outputs.closed_window_rows` on the windows the watermark (the partitions' lowest)
  has passed after each round of batches, and on every window left at the end of input;
- sink: the object sink (`PartitionedS3Sink`: Parquet encoding, manifests, conditional PUTs)
  writing those rows into the local S3, then a snapshot and close;
- start-up: the job (`bench.job.run_job`) on a 1,000-event topic: its start-up and shut-down,
  with next to no work, over the events of the measured topic;
- the job: `run_job` on the topic, end to end (`make bench` passes its own runs).

Two figures each, medians of --runs: wall (the part run alone) and CPU (this process's user +
system time over the part, all threads: librdkafka's, polars', the sink's uploads; what
`job CPU s` counts for the job). CPU adds up across threads, so "engine/other" (the job minus
the parts) in the CPU column is what bytewax and everything between the parts cost; in the job
the parts overlap in wall time (librdkafka fetches while the step runs, the sink writes in the
background), so in the wall column the remainder can be negative.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench.ceiling import reader_settings
from bench.job import FLOW, READER, run_job
from bench.stack import BROKERS, S3, Workload, load, median_of
from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location
from connectors.sinks.s3_objects import PartitionedS3Sink
from connectors.transports import kafka_native
from connectors.transports.batch import RecordBatch
from connectors.transports.kafka import CONSUMER_DEFAULTS
from connectors.transports.kafka_native import OFFSET_BEGINNING, NativePartitionReader
from connectors.transports.memory import MemoryTransport
from dataflows import movie_impressions
from dataflows.event_time import NO_WATERMARK, partition_watermark
from dataflows.impressions import outputs
from dataflows.impressions.layout import OUTPUT_SCHEMA
from dataflows.impressions.windows import WindowSlice, WindowTallies, fold
from dataflows.settings import MovieImpressionsSettings
from dataflows.skeleton import GC_THRESHOLDS
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket

PARTS = ("read", "step", "close", "sink", "startup")
READERS = ("confluent", "native")  # KAFKA_READER's values
# Start-up: a run with next to no work (few movies, one hour: a handful of objects).
STARTUP = Workload("startup", 1_000, 2, 10, hours=1)

Batches = dict[int, list[RecordBatch]]  # partition -> its batches in offset order
Step = Callable[[str, RecordBatch, int], tuple[list, int]]


class Stopwatch:
    """Wall and CPU seconds (this process, all threads) added up over the spans it times."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


@dataclass(frozen=True)
class Cost:
    wall: float  # seconds
    cpu: float


def per_event(parts: Mapping[str, Cost], job: Cost, events: int) -> dict[str, dict[str, float]]:
    """µs per event of each part, of their sum (`parts`), of the job and of the job minus the parts (`other`)."""

    def us(seconds: float) -> float:
        return seconds / events * 1e6

    out = {name: {"wall_us": us(c.wall), "cpu_us": us(c.cpu)} for name, c in parts.items()}
    summed = {"wall_us": us(sum(c.wall for c in parts.values())), "cpu_us": us(sum(c.cpu for c in parts.values()))}
    whole = {"wall_us": us(job.wall), "cpu_us": us(job.cpu)}
    other = {key: whole[key] - summed[key] for key in whole}
    return {**out, "parts": summed, "job": whole, "other": other}


def closable(open_windows: Iterable[tuple[int, str]], watermark: int, window_ms: int) -> list[tuple[int, str]]:
    """The open windows, (start, shard), that `watermark` has passed: start order, then shard."""
    return sorted(key for key in open_windows if key[0] + window_ms <= watermark)


def _partitions(topic: str, settings: dict) -> list[int]:
    probe = Consumer(settings)
    try:
        return sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        probe.close()


def read_confluent(topic: str, size: int, watch: Stopwatch) -> Batches:
    """The topic's batches as the job's confluent-kafka reader takes them; only the reading timed."""
    settings = reader_settings(BROKERS, CONSUMER_DEFAULTS)
    consumers = {}
    for p in _partitions(topic, settings):
        consumers[p] = Consumer(settings)
        consumers[p].assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
    batches: Batches = {p: [] for p in consumers}
    reading = dict(consumers)
    while reading:
        for p, consumer in list(reading.items()):
            ended = False
            with watch.timing():  # kafka_partition._read_messages
                messages = []
                for msg in consumer.consume(size, 0.001):
                    error = msg.error()
                    if error is None:
                        messages.append(msg)
                    elif error.code() == KafkaError._PARTITION_EOF:
                        ended = True
                        break
                batch = RecordBatch.of_messages(messages) if messages else None
            if batch is not None:  # kept without the messages (memory); offsets as a step would read them
                offsets = np.fromiter((m.offset() for m in messages), np.int64, len(messages))
                batches[p].append(RecordBatch(topic, p, batch.value_list(), offsets))
            if ended:
                del reading[p]
    for consumer in consumers.values():
        consumer.close()
    return batches


def read_native(topic: str, size: int, watch: Stopwatch) -> Batches:
    """The topic's batches as the job's native reader takes them; only the reading timed."""
    settings = reader_settings(BROKERS, CONSUMER_DEFAULTS)
    readers = {p: NativePartitionReader(settings, topic, p, OFFSET_BEGINNING) for p in _partitions(topic, settings)}
    batches: Batches = {p: [] for p in readers}
    reading = dict(readers)
    while reading:
        for p, reader in list(reading.items()):
            with watch.timing():  # kafka_partition._read_native
                read = reader.read(size, 0.001)
                batch = RecordBatch(topic, p, read.values, read.offsets, read.keys) if len(read.offsets) else None
            if batch is not None:
                batches[p].append(batch)
            if read.reached_end:
                del reading[p]
    for reader in readers.values():
        reader.close()
    return batches


def job_step(settings: MovieImpressionsSettings, partitions: int) -> Step:
    """The job's own batch step, as `build_flow` wires it (taken from the transport it hands it to)."""
    transport = MemoryTransport({settings.input_topic: [[] for _ in range(partitions)]}, settings.kafka_batch_size)
    unused = PartitionedS3Sink(S3Location("unused", "unused"), OUTPUT_SCHEMA)  # never built: no I/O
    movie_impressions.build_flow(settings, transport, unused)
    return transport.step


def step_and_close(
    settings: MovieImpressionsSettings, batches: Batches, step_watch: Stopwatch, close_watch: Stopwatch
) -> list[list[tuple[str, ObjectRows]]]:
    """The batches through the step and the windows, in rounds (a batch of each partition in turn,
    as bytewax polls them); the rows sink's items of each close, in order."""
    window_ms = int(settings.window.total_seconds() * 1000)
    bound_ms = int(settings.max_out_of_orderness.total_seconds() * 1000)
    step = job_step(settings, len(batches))
    to_rows = outputs.closed_window_rows(settings.s3_prefix, window_ms)
    newest = dict.fromkeys(batches, NO_WATERMARK)  # each partition's state: its newest event time
    windows: dict[tuple[int, str], WindowTallies] = {}
    closes = []
    for i in range(max(map(len, batches.values()), default=0)):
        for p, part in batches.items():
            if i < len(part):
                with step_watch.timing():
                    items, newest[p] = step(f"{p}-{settings.input_topic}", part[i], newest[p])
                    for item in items:
                        if isinstance(item, WindowSlice):
                            key = (item.window_start, item.shard)
                            fold(windows.get(key) or windows.setdefault(key, WindowTallies()), item)
        # A partition at its end no longer holds the watermark back; at the end of input all windows close.
        reading = [newest[p] for p, part in batches.items() if i + 1 < len(part)]
        watermark = min((partition_watermark(t, bound_ms) for t in reading), default=2**62)
        closing = closable(windows, watermark, window_ms)
        if closing:
            with close_watch.timing():
                closes.append(
                    to_rows([(shard, (start // window_ms, windows.pop((start, shard)))) for start, shard in closing])
                )
    return closes


def write(settings: MovieImpressionsSettings, closes: list[list[tuple[str, ObjectRows]]], watch: Stopwatch) -> None:
    """The rows into the local S3 through the job's object sink (a bucket of its own), items routed
    to sink partitions as bytewax routes them; then a snapshot and close."""
    bucket = f"bench-breakdown-{uuid.uuid4().hex[:8]}"
    create_bucket(S3, bucket)
    sink = PartitionedS3Sink(
        S3Location(bucket, settings.s3_prefix, S3, settings.s3_region),
        OUTPUT_SCHEMA,
        settings.output_format,
        settings.sink_partitions,
        namespace=f"breakdown-{uuid.uuid4().hex[:8]}",
        direct_put=settings.s3_direct_put,
    )
    parts = [sink.build_part("s3_out", name, None) for name in sink.list_parts()]  # start-up: not timed
    with watch.timing():
        for items in closes:
            routed: dict[int, list[ObjectRows]] = defaultdict(list)
            for shard, rows in items:
                routed[sink.part_fn(shard) % len(parts)].append(rows)
            for i, rows_of_part in routed.items():
                parts[i].write_batch(rows_of_part)
        for part in parts:
            part.snapshot()
        for part in parts:
            part.close()


def one_pass(topic: str, reader: str, settings: MovieImpressionsSettings) -> dict[str, Cost]:
    """One measurement of read, step, close and sink on `topic` with `reader`."""
    watches = {part: Stopwatch() for part in ("read", "step", "close", "sink")}
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # as the job runs (dataflows/skeleton.py)
    try:
        read = read_native if reader == "native" else read_confluent
        batches = read(topic, settings.kafka_batch_size, watches["read"])
        closes = step_and_close(settings, batches, watches["step"], watches["close"])
        del batches
        write(settings, closes, watches["sink"])
    finally:
        gc.set_threshold(*before)
    return {part: Cost(w.wall, w.cpu) for part, w in watches.items()}


def measure(
    workload: Workload, runs: int, jobs: Mapping[str, dict | None] | None = None, readers: Iterable[str] = READERS
) -> dict:
    """The breakdown of `workload` for each reader (the native one when built): µs per event by
    part (`per_event`). `jobs`: the job's own runs (`run_job`'s figures) by reader, if made already."""
    settings = replace(
        MovieImpressionsSettings.from_env({"IMPRESSIONS_TOPIC": workload.topic}),
        s3_prefix=f"breakdown-{workload.name}",
        bounded=True,
    )
    out: dict = {"events": workload.events, "startup_topic": STARTUP.topic, "readers": {}}
    for reader in readers:
        if reader == "native" and kafka_native.unavailable() is not None:
            continue
        env = READER[reader]
        print(f"   breakdown of {workload.topic}, {reader} reader", file=sys.stderr)
        passes = [one_pass(workload.topic, reader, settings) for _ in range(runs)]
        costs = {
            part: Cost(statistics.median(p[part].wall for p in passes), statistics.median(p[part].cpu for p in passes))
            for part in passes[0]
        }
        startup = median_of(runs, lambda env=env: run_job(FLOW, STARTUP.topic, env=env))
        costs["startup"] = Cost(startup["seconds"], startup["cpu_seconds"])
        job = (jobs or {}).get(reader) or median_of(runs, lambda env=env: run_job(FLOW, workload.topic, env=env))
        out["readers"][reader] = per_event(costs, Cost(job["seconds"], job["cpu_seconds"]), workload.events)
    return out


def main() -> int:
    from bench.report import breakdown_section

    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--workload", action="append", choices=("high", "seed"), help="default: both")
    parser.add_argument("--reader", action="append", choices=READERS, help="default: both (native when built)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--high-events", type=int, default=2_000_000)
    parser.add_argument("--seed-events", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    workloads = {
        "high": Workload("high", args.high_events, 200, 5_000),
        "seed": Workload("seed", args.seed_events, 20, 100),
    }
    load(STARTUP)
    for name in args.workload or list(workloads):
        load(workloads[name])
        figures = measure(workloads[name], args.runs, readers=args.reader or READERS)
        print("\n".join([f"workload {name}", *breakdown_section(figures)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
