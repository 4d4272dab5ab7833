"""The job as `make bench` runs it: bounded, exactly-once into the local S3, start-up
included, a fresh process per run (`run_job`); and the latency from a window's end to its
object in S3 at a fixed input rate (`latency`).
"""

from __future__ import annotations

import compileall
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import polars as pl

from bench.stack import BROKERS, BUCKET, ROOT, S3, topic_size
from devstack.kafka import create_topics
from devstack.processes import free_port
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket, delete_bucket, s3_client
from producers.movie_impressions import TrafficShape, generate, produce

FLOW = "dataflows.movie_impressions:flow"
READER = {reader: {"KAFKA_READER": reader} for reader in ("confluent", "native")}  # each reader, whatever the default


@functools.cache
def compiled(root: Path) -> None:
    """The checkout's bytecode, written once: a user's second run finds it, and a run must not
    spend ~0.1 s compiling our modules where PYTHONDONTWRITEBYTECODE is set (CI, some shells)."""
    for package in ("dataflows", "connectors"):
        compileall.compile_dir(root / package, quiet=1)


def job_environment(topic: str, bucket: str, prefix: str) -> dict[str, str]:
    """A bounded run of the impressions job from `topic` into the local S3 (`bucket`, `prefix`)."""
    return {
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
    }


def run_job(
    target: str,
    topic: str,
    processes: int = 1,
    workers: int = 1,
    env: dict | None = None,
    events: int | None = None,
    root: Path = ROOT,
) -> dict:
    """One bounded run; events/s from process start to exit, peak RSS and CPU summed over processes.

    `topic` is a Kafka topic, or a Kinesis stream with TRANSPORT=kinesis in `env` (then `events` is its size).
    `root`: the checkout whose code runs (the working directory of `-m bytewax.run`).
    """
    compiled(root)
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    # A bucket per run: the local S3 server lists a bucket by walking all of its keys (S3
    # lists by prefix), so earlier runs' objects would slow each later run's start-up checks.
    bucket = f"{BUCKET}-{prefix}"
    create_bucket(S3, bucket)
    recovery = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    try:
        return _run(target, topic, processes, workers, env, events, root, bucket, prefix, recovery)
    finally:
        delete_bucket(S3, bucket)
        shutil.rmtree(recovery, ignore_errors=True)


def _run(
    target: str,
    topic: str,
    processes: int,
    workers: int,
    env: dict | None,
    events: int | None,
    root: Path,
    bucket: str,
    prefix: str,
    recovery: Path,
) -> dict:
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), str(max(processes, 1))], check=True)
    job_env = {**job_environment(topic, bucket, prefix), **(env or {})}
    argv = [sys.executable, "-m", "bytewax.run", target, "-w", str(workers), "-r", str(recovery), "-s", "5", "-b", "0"]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", *argv, *(["-i", str(i), "-a", addresses] if processes > 1 else [])],
            env=job_env,
            cwd=root,
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
