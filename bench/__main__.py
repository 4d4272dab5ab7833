"""`make bench`: throughput, memory and latency of the movie-impressions job, with ceilings.

Every figure is measured in this run on this machine, against the local stack
(`make up`): fixed seeded workloads are loaded into Kafka once, then each
configuration runs in bounded mode (stop at end of topic) into the local S3 with
exactly-once on (recovery store, manifests). Figures are medians of --runs runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from confluent_kafka import Consumer, TopicPartition

from bench import backups as bench_backups
from bench import bookings as bench_bookings
from bench import kinesis as bench_kinesis
from bench import resume as bench_resume
from bench.steady import steady_rate
from connectors.transports import kafka_native
from connectors.transports.kafka_native import OFFSET_BEGINNING, NativePartitionReader
from dataflows.skeleton import GC_THRESHOLDS
from devstack.kafka import create_topics
from devstack.processes import free_port
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket, s3_client
from producers.movie_impressions import TrafficShape, generate, produce

BROKERS = "127.0.0.1:19092"
S3 = "http://127.0.0.1:4566"
BUCKET = "bench"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    name: str
    events: int
    movies: int
    users: int
    hours: int = 4  # of event time
    invalid_fraction: float = 0.0  # records the job must send to the dead letters

    @property
    def topic(self) -> str:
        return f"bench-{self.name}-{self.events}"

    def shape(self) -> TrafficShape:
        # Hours of event time whatever the size: many windows, realistic spacing.
        return TrafficShape(
            count=self.events,
            movies=self.movies,
            users=self.users,
            step_ms=max(1, self.hours * 3600 * 1000 // self.events),
            jitter_ms=2_000,
            invalid_fraction=self.invalid_fraction,
            seed=1,
        )


def topic_size(topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": "bench"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions)
    finally:
        consumer.close()


def load(workload: Workload) -> None:
    """Produce the workload once; later runs reuse the topic."""
    if topic_size(workload.topic) == workload.events:
        return
    create_topics(BROKERS, [workload.topic], partitions=2)
    print(f"loading {workload.events:,} events into {workload.topic} ...", file=sys.stderr)
    produce(generate(workload.shape()), BROKERS, workload.topic)


# The ceiling is the best of these (librdkafka's defaults fetch little at a time). Each
# runs with the job's garbage-collector tuning and with the job's consume size too
# (`CONSUME_SIZES`), so nothing the job gains from either flatters it against the ceiling.
FETCH_SWEEP: dict[str, dict[str, int]] = {
    "defaults": {},
    "1 MB fetches, 400 K / 32 MiB queue (the jobs' defaults)": {
        "fetch.min.bytes": 1_000_000,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 10_000_000,
        "queued.min.messages": 400_000,
        "queued.max.messages.kbytes": 32_768,
    },
    "1 MB fetches, 1 M / 1 GB queue": {
        "fetch.min.bytes": 1_000_000,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 10_000_000,
        "queued.min.messages": 1_000_000,
        "queued.max.messages.kbytes": 1_000_000,
    },
}


NATIVE_READER = {"KAFKA_READER": "native"}
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


def raw_consume_ceilings(topic: str, runs: int) -> dict:
    """Raw consume with librdkafka's defaults, and the best of the sweep, confluent-kafka's and the
    native reader's (when built): the ceiling is the fastest reader measured."""
    figures = {
        f"{name}, {size:,} per call, {layout}": statistics.median(
            raw_consume(topic, cfg, size, layout) for _ in range(runs)
        )
        for name, cfg in FETCH_SWEEP.items()
        for size in CONSUME_SIZES
        for layout in LAYOUTS
    }
    if kafka_native.unavailable() is None:
        for name, cfg in FETCH_SWEEP.items():
            for size in CONSUME_SIZES:
                figures[f"{name}, {size:,} per call, native reader per partition"] = statistics.median(
                    native_consume(topic, cfg, size) for _ in range(runs)
                )
    best = max(figures, key=figures.__getitem__)
    return {
        "raw_consume_defaults": {"events_per_s": figures[f"defaults, {CONSUME_SIZES[0]:,} per call, {LAYOUTS[0]}"]},
        "raw_consume": {"events_per_s": figures[best], "fetch_settings": best, "sweep": figures},
    }


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


def run_job(
    target: str, topic: str, processes: int = 1, workers: int = 1, env: dict | None = None, events: int | None = None
) -> dict:
    """One bounded run; events/s from process start to exit, peak RSS and CPU summed over processes.

    `topic` is a Kafka topic, or a Kinesis stream with TRANSPORT=kinesis in `env` (then `events` is its size).
    """
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    # A bucket per run: the local S3 server lists a bucket by walking all of its keys (S3
    # lists by prefix), so earlier runs' objects would slow each later run's start-up checks.
    bucket = f"{BUCKET}-{prefix}"
    create_bucket(S3, bucket)
    recovery = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), str(max(processes, 1))], check=True)
    job_env = {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "KAFKA_BROKERS": BROKERS,
        "S3_ENDPOINT_URL": S3,
        "S3_BUCKET": bucket,
        "S3_PREFIX": prefix,
        "IMPRESSIONS_TOPIC": topic,
        "BOUNDED": "true",
        "DEAD_LETTER_TOPIC": "movie-impressions-dead-letter",
        "LATE_TOPIC": "movie-impressions-late",
        **(env or {}),
    }
    argv = [sys.executable, "-m", "bytewax.run", target, "-w", str(workers), "-r", str(recovery), "-s", "5", "-b", "0"]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", *argv, *(["-i", str(i), "-a", addresses] if processes > 1 else [])],
            env=job_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - started
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            msg = f"{target} failed:\n{err[-3000:]}"
            raise RuntimeError(msg)
    # /usr/bin/time's line: peak RSS (KB), user and system CPU seconds, summed over processes.
    usage = [err.strip().splitlines()[-1].split() for _, err in outputs]
    peak_kb = sum(int(kb) for kb, _, _ in usage)
    cpu_s = sum(float(user) + float(system) for _, user, system in usage)
    storage = {
        "aws_endpoint_url": S3,
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
        "aws_access_key_id": LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    rows = (
        pl.scan_parquet(f"s3://{bucket}/{prefix}/**/*.parquet", storage_options=storage)
        .select(pl.col("impressions").sum())
        .collect()
        .item()
    )
    return {
        "seconds": elapsed,
        "events_per_s": (events if events is not None else topic_size(topic)) / elapsed,
        "peak_mb": peak_kb / 1024,
        # The job's own CPU: on a shared machine, steadier than the wall clock (excludes the broker and S3).
        "cpu_seconds": cpu_s,
        "impressions_out": rows,
    }


def median_of(runs: int, measure) -> dict:
    results = [measure() for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def latency(window_minutes: int = 1, rate: float = 1000.0) -> dict:
    """Window end (event time, = wall time here) -> its first object visible in S3, at a fixed input rate."""
    topic = f"bench-latency-{uuid.uuid4().hex[:6]}"
    create_topics(BROKERS, [topic], partitions=2)
    prefix = f"latency-{uuid.uuid4().hex[:6]}"
    recovery = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    bound, snapshot = 2, 2
    env = {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "KAFKA_BROKERS": BROKERS,
        "S3_ENDPOINT_URL": S3,
        "S3_BUCKET": BUCKET,
        "S3_PREFIX": prefix,
        "IMPRESSIONS_TOPIC": topic,
        "WINDOW_MINUTES": str(window_minutes),
        "MAX_OUT_OF_ORDERNESS_SECONDS": str(bound),
        "KAFKA_BATCH_SIZE": "500",
    }
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            "dataflows.movie_impressions:flow",
            "-r",
            str(recovery),
            "-s",
            str(snapshot),
            "-b",
            "0",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    window_ms = window_minutes * 60_000
    now_ms = int(time.time() * 1000)
    boundary = now_ms - now_ms % window_ms + window_ms  # the window ending here is measured
    duration = (boundary - now_ms) / 1000 + 8
    shape = TrafficShape(
        count=int(duration * rate),
        movies=20,
        users=200,
        start_ms=now_ms,
        step_ms=int(1000 / rate),
        jitter_ms=1_000,
        seed=3,
    )
    import threading

    feeder = threading.Thread(target=produce, args=(generate(shape), BROKERS, topic, rate))
    feeder.start()
    client = s3_client(S3)
    first_seen: dict[str, float] = {}
    deadline = time.time() + duration + 20
    while time.time() < deadline and len(first_seen) < 20:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
            for o in page.get("Contents", []):
                if "/_sink/" not in o["Key"]:
                    first_seen.setdefault(o["Key"], time.time())
        time.sleep(0.2)
    feeder.join()
    job.kill()
    job.wait()
    delays = sorted(t - boundary / 1000 for t in first_seen.values())
    return {
        "objects": len(delays),
        "median_s": statistics.median(delays) if delays else None,
        "max_s": max(delays) if delays else None,
        "bound_s": bound,
        "snapshot_s": snapshot,
        "budget_s": bound + snapshot + 5,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--high-events", type=int, default=2_000_000)
    parser.add_argument("--seed-events", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=20_000,
        help="the textbook design is ~100x slower: it runs on a prefix-sized topic of the same shape",
    )
    parser.add_argument(
        "--kinesis-events", type=int, default=20_000, help="the local Kinesis server slows as a stream fills"
    )
    parser.add_argument("--bookings", type=int, default=100_000, help="the booking job's workload (bench/bookings.py)")
    parser.add_argument("--out", default="bench-results.json")
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    create_bucket(S3, BUCKET)
    workloads = [Workload("high", args.high_events, 200, 5_000), Workload("seed", args.seed_events, 20, 100)]
    baseline = Workload("high", args.baseline_events, 200, 5_000)
    # Steady state (bench/steady.py): each workload's first half, as dense in event time.
    halves = {w.name: replace(w, name=f"{w.name}-2h", events=w.events // 2, hours=w.hours // 2) for w in workloads}
    # The high workload with one record in 1,000 invalid: bad records must cost only themselves.
    dirty = replace(workloads[0], name="high-dirty", invalid_fraction=0.001)
    for w in [*workloads, baseline, *halves.values(), dirty]:
        load(w)

    flow = "dataflows.movie_impressions:flow"
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "workloads": {},
    }
    for w in workloads:
        print(f"== {w.name}: {w.events:,} events, {w.movies} movies x {w.users} users", file=sys.stderr)
        r: dict = raw_consume_ceilings(w.topic, args.runs)
        values = read_all(w.topic)
        r["polars"] = median_of(args.runs, lambda v=values: {"events_per_s": polars_ceiling(v)})
        del values
        if w.name == "high":
            r["textbook_bytewax"] = median_of(args.runs, lambda: run_job("bench.textbook:flow", baseline.topic))
        r["ours_1_worker"] = median_of(args.runs, lambda w=w: run_job(flow, w.topic))
        if w.name == "high":
            r["ours_1_worker_0.1%_invalid"] = median_of(args.runs, lambda: run_job(flow, dirty.topic))
        half = halves[w.name]
        small = median_of(args.runs, lambda half=half: run_job(flow, half.topic))
        large = r["ours_1_worker"]["seconds"]
        r["ours_1_worker_steady"] = {
            "events_per_s": steady_rate(half.events, small["seconds"], w.events, large),
            "from": f"{half.topic} ({small['seconds']:.1f} s) and {w.topic} ({large:.1f} s)",
        }
        if kafka_native.unavailable() is None:
            r["ours_1_worker_native"] = median_of(args.runs, lambda w=w: run_job(flow, w.topic, env=NATIVE_READER))
            small = median_of(args.runs, lambda half=half: run_job(flow, half.topic, env=NATIVE_READER))
            large = r["ours_1_worker_native"]["seconds"]
            r["ours_1_worker_native_steady"] = {
                "events_per_s": steady_rate(half.events, small["seconds"], w.events, large),
                "from": f"{half.topic} ({small['seconds']:.1f} s) and {w.topic} ({large:.1f} s)",
            }
        r["ours_2_workers"] = median_of(args.runs, lambda w=w: run_job(flow, w.topic, workers=2))
        r["ours_2_processes"] = median_of(args.runs, lambda w=w: run_job(flow, w.topic, processes=2))
        results["workloads"][w.name] = r
        Path(args.out).write_text(json.dumps(results, indent=2))  # so far: a long run cut short keeps its figures
    print(f"== kinesis: {args.kinesis_events:,} events in 2 shards", file=sys.stderr)
    stream = bench_kinesis.load(args.kinesis_events)
    kinesis_env = {"TRANSPORT": "kinesis", "KINESIS_ENDPOINT_URL": bench_kinesis.ENDPOINT}
    results["kinesis"] = {
        "raw_get_records": median_of(args.runs, lambda: bench_kinesis.raw_get_records(stream)),
        "ours_1_worker": median_of(
            args.runs, lambda: run_job(flow, stream, env=kinesis_env, events=args.kinesis_events)
        ),
    }
    results["latency"] = latency()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"== bookings: {args.bookings:,} bookings", file=sys.stderr)
    other = bench_bookings.checkout(bench_bookings.FLUSH_PER_BATCH)
    results["bookings"] = bench_bookings.compare(other, args.bookings, args.runs)
    results["object_sink_resume"] = bench_resume.resume(writes=64, folders=20, runs=args.runs)
    print("== recovery store backups off and on", file=sys.stderr)
    results["backups"] = bench_backups.compare(workloads[0].topic, workloads[0].events, args.runs)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']}; medians of {results['runs']} runs; {results['date']}\n")
    for name, r in results["workloads"].items():
        ours = r["ours_1_worker"]["events_per_s"]
        print(f"workload {name}")
        print(f"ceiling: raw consume with {r['raw_consume']['fetch_settings']} (best of the fetch sweep)")
        print("| configuration | events/s | x raw consume | x textbook | peak MB |")
        print("|---|---:|---:|---:|---:|")
        for config, m in r.items():
            if m.get("events_per_s") is None:
                continue
            base = r.get("textbook_bytewax", {}).get("events_per_s")
            print(
                f"| {config} | {m['events_per_s']:,.0f} | {m['events_per_s'] / r['raw_consume']['events_per_s']:.2f} "
                f"| {m['events_per_s'] / base if base else float('nan'):.1f} | {m.get('peak_mb', float('nan')):.0f} |"
            )
        print(f"2 processes / 1 process: {r['ours_2_processes']['events_per_s'] / ours:.2f}\n")
    kin = results["kinesis"]
    ceiling = kin["raw_get_records"]["events_per_s"]
    ours_k = kin["ours_1_worker"]["events_per_s"]
    print(
        f"kinesis: ours {ours_k:,.0f} events/s = {ours_k / ceiling:.2f} x a plain GetRecords loop "
        f"({ceiling:,.0f} records/s) on the same local stream\n"
    )
    bench_bookings.print_table(results["bookings"])
    bench_resume.print_line(results["object_sink_resume"])
    bench_backups.print_table(results["backups"])
    lat = results["latency"]
    print(
        f"latency (window end -> object in S3): median {lat['median_s']:.1f} s, max {lat['max_s']:.1f} s over "
        f"{lat['objects']} objects; budget bound + snapshot + 5 = {lat['budget_s']} s"
    )


if __name__ == "__main__":
    sys.exit(main())
