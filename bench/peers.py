"""`make bench-peers`: the same aggregation in Quix Streams, reading the same topic.

Runs in its own virtualenv (.cache/peers, made by `make bench-peers`): count and max
per (movieId, userId) in 15-minute event-time tumbling windows, as our job does,
without writing to S3. Prints events/s beside the latest `make bench` figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench.steady import report, timed_run


def quix_streams(brokers: str, topic: str, events: int) -> float:
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max

    app = Application(
        broker_address=brokers,
        consumer_group=f"peer-quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
    )
    source = app.topic(
        topic, value_deserializer="json", timestamp_extractor=lambda value, headers, ts, ts_type: value["timestamp"]
    )
    sdf = app.dataframe(source)
    # Quix keys by the message key (movieId here); per (movie, user) it repartitions via Kafka.
    sdf = sdf.group_by(lambda v: f"{v['movieId']}:{v['userId']}", name="movie_user")
    sdf.tumbling_window(timedelta(minutes=15), grace_ms=timedelta(seconds=30)).agg(
        impressions=Count(), latestImpression=Max("timestamp")
    ).final()
    idle = 5.0
    started = time.perf_counter()
    app.run(timeout=idle)  # returns once no message arrived for `idle` seconds
    return events / (time.perf_counter() - started - idle)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--brokers", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="bench-high-2000000")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--small-topic", help="the same shape, half the events (for the steady state)")
    parser.add_argument("--small-events", type=int, default=1_000_000)
    parser.add_argument("--results", default="bench-results.json")
    args = parser.parse_args()
    if args.small_topic is not None:
        runs = []
        for topic, events in ((args.small_topic, args.small_events), (args.topic, args.events)):
            argv = [sys.executable, "-m", "bench.peers", "--brokers", args.brokers, "--results", ""]
            runs.append((events, timed_run([*argv, "--topic", topic, "--events", str(events)])))
        print(report("Quix Streams, 1 process (process start to exit, 5 s idle end)", runs[0], runs[1]))
        return 0
    rate = quix_streams(args.brokers, args.topic, args.events)
    ours = None
    if args.results and Path(args.results).exists():
        ours = json.loads(Path(args.results).read_text())["workloads"]["high"]["ours_1_worker"]["events_per_s"]
    print(
        f"Quix Streams, 1 process, {args.topic}: {rate:,.0f} events/s"
        + (f"; ours (1 worker, with S3 and exactly-once): {ours:,.0f} events/s" if ours else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
