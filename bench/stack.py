"""What every `make bench` part shares: the local stack's addresses, the workloads and their topics.

The workloads are loaded into the local broker (`make up`) once; later runs reuse the topics.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from devstack.kafka import create_topics
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


def median_of(runs: int, measure) -> dict:
    return medians([measure() for _ in range(runs)])


def medians(results: list[dict]) -> dict:
    """Each figure's median over runs' results (dicts with the same keys)."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def process_cpu(pid: int | None) -> float:
    """Seconds of CPU (user and system) a process has spent, from /proc; 0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
