"""PyFlink SQL peer of `make bench-peers`: TUMBLE count/max per (movieId, userId) with a watermark.

Runs in its own virtualenv (apache-flink pins its own dependencies); the Kafka SQL
connector jar comes from Maven Central (see the Makefile). Bounded: reads the topic
from the earliest to the latest offset at start, writes to a blackhole sink.

With --small-topic, each topic runs in a fresh process (JVM included) and the steady
state is computed from the two (bench/steady.py), as for our job.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from bench.steady import report, timed_run


def flink_sql(brokers: str, topic: str, jar: str, total: int) -> float:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "1")
    env.get_config().set("pipeline.jars", f"file://{jar}")
    env.execute_sql(f"""
        CREATE TABLE impressions (
            movieId STRING, userId STRING, `timestamp` BIGINT,
            ts AS TO_TIMESTAMP_LTZ(`timestamp`, 3),
            WATERMARK FOR ts AS ts - INTERVAL '30' SECOND
        ) WITH (
            'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{brokers}',
            'properties.group.id' = 'peer-flink-{uuid.uuid4().hex[:6]}',
            'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
            'format' = 'json', 'json.ignore-parse-errors' = 'true'
        )""")
    env.execute_sql("""
        CREATE TABLE out_rows (movieId STRING, userId STRING, impressions BIGINT, latestImpression BIGINT,
                               windowStart TIMESTAMP(3), windowEnd TIMESTAMP(3)) WITH ('connector' = 'blackhole')""")
    started = time.perf_counter()
    env.execute_sql("""
        INSERT INTO out_rows
        SELECT movieId, userId, COUNT(*), MAX(`timestamp`), window_start, window_end
        FROM TABLE(TUMBLE(TABLE impressions, DESCRIPTOR(ts), INTERVAL '15' MINUTES))
        GROUP BY movieId, userId, window_start, window_end""").wait()
    return total / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flink_peer", description=__doc__)
    parser.add_argument("--brokers", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="bench-high-2000000")
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the topic")
    parser.add_argument("--small-topic", help="the same shape, half the events (for the steady state)")
    parser.add_argument("--small-events", type=int, default=1_000_000)
    parser.add_argument("--jar", required=True)
    args = parser.parse_args()
    if args.small_topic is None:
        rate = flink_sql(args.brokers, args.topic, args.jar, args.events)
        print(f"PyFlink SQL, parallelism 1, {args.topic}: {rate:,.0f} events/s (job start included)")
        return 0
    runs = []
    for topic, events in ((args.small_topic, args.small_events), (args.topic, args.events)):
        argv = [sys.executable, "-m", "bench.flink_peer", "--brokers", args.brokers, "--jar", args.jar]
        runs.append((events, timed_run([*argv, "--topic", topic, "--events", str(events)])))
    print(report("PyFlink SQL, parallelism 1 (process start to exit)", runs[0], runs[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
