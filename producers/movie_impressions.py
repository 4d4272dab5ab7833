"""Realistic, reproducible movie-impression traffic for the local stack and the tests.

    python -m producers.movie_impressions --count 5000 --rate 0 --start-minutes-ago 120

Like the seed job's generator: one event every 10 ms by default, keyed by movieId.
Event time starts at `start` and advances by `step` per event (so history can be
produced faster than real time), minus a random jitter below `jitter` (bounded
disorder). A fraction of events are invalid (one malformation each) and a fraction
deliberately late (two to three windows behind), half of those for movies that have
gone quiet, whose window state is long gone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from connectors.transports.kafka_client import KafkaClientConfig
from producers.kafka_producer import ProduceError, kafka_settings, produce_messages

WINDOW_MS = 15 * 60 * 1000


@dataclass(frozen=True)
class TrafficShape:
    count: int = 1000
    movies: int = 20
    users: int = 100
    start_ms: int = 1_546_844_400_000  # 2019-01-07 07:00 UTC
    step_ms: int = 10
    jitter_ms: int = 2_000
    invalid_fraction: float = 0.0
    late_fraction: float = 0.0
    window_ms: int = WINDOW_MS
    seed: int = 0


@dataclass(frozen=True)
class GeneratedEvent:
    key: bytes
    value: bytes
    kind: str  # "valid", "invalid" or "late"
    movie_id: str | None = None
    user_id: str | None = None
    timestamp: int | None = None


def _malformed(rng: random.Random, movie: str, user: str, ts: int) -> bytes:
    good = {"movieId": movie, "userId": user, "timestamp": ts}
    variants: list[bytes] = [
        b"{not json",
        b"",
        b"\xff\xfe\x00binary",
        json.dumps([movie, user, ts]).encode(),
        json.dumps({"userId": user, "timestamp": ts}).encode(),
        json.dumps({**good, "movieId": ""}).encode(),
        json.dumps({**good, "userId": None}).encode(),
        json.dumps({**good, "timestamp": str(ts)}).encode(),
        json.dumps({**good, "timestamp": ts + 0.5}).encode(),
        json.dumps({**good, "timestamp": 42}).encode(),
        json.dumps({**good, "movieId": {"id": movie}}).encode(),
        json.dumps({**good, "pad": "x" * 70_000}).encode(),
    ]
    return rng.choice(variants)


def generate(shape: TrafficShape) -> Iterator[GeneratedEvent]:
    rng = random.Random(shape.seed)
    movies = [str(2000 + m) for m in range(shape.movies)]
    # The first quarter of the movies go quiet after the first third of the run.
    quiet = movies[: max(1, shape.movies // 4)] if shape.movies > 1 else []
    quiet_after = shape.start_ms + shape.count * shape.step_ms // 3
    late_allowed_after = shape.start_ms + 3 * shape.window_ms
    for i in range(shape.count):
        now = shape.start_ms + i * shape.step_ms
        active = movies if now < quiet_after else movies[len(quiet) :] or movies
        user = str(1000 + rng.randrange(shape.users))
        roll = rng.random()
        if roll < shape.invalid_fraction:
            movie = rng.choice(active)
            yield GeneratedEvent(movie.encode(), _malformed(rng, movie, user, now), "invalid")
            continue
        if roll < shape.invalid_fraction + shape.late_fraction and now >= late_allowed_after:
            movie = rng.choice(quiet if quiet and rng.random() < 0.5 else active)
            ts = now - 2 * shape.window_ms - rng.randrange(shape.window_ms)
            kind = "late"
        else:
            movie = rng.choice(active)
            ts = now - rng.randrange(shape.jitter_ms + 1)
            kind = "valid"
        value = json.dumps({"movieId": movie, "userId": user, "timestamp": ts}).encode()
        yield GeneratedEvent(movie.encode(), value, kind, movie, user, ts)


def produce(
    events: Iterator[GeneratedEvent],
    brokers: str,
    topic: str,
    rate: float = 0.0,
    progress: bool = False,
    client: KafkaClientConfig | None = None,
) -> int:
    """Send events keyed by movieId; `rate` events/s (0 = as fast as the broker takes them)."""
    return produce_messages(((topic, e.key, e.value) for e in events), brokers, rate, progress, client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producers.movie_impressions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--brokers",
        help="host:port list (default: KAFKA_BROKERS, else 127.0.0.1:19092); security and any librdkafka "
        "property come from the jobs' settings: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*, "
        "KAFKA_PROPERTIES, KAFKA_PROPERTY_<name> (docs/settings.md)",
    )
    parser.add_argument("--topic", default="movie-impressions")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second; 0 = as fast as possible")
    parser.add_argument("--count", type=int, help="events to send (default: --duration * --rate, else 1000)")
    parser.add_argument("--duration", type=float, help="seconds to run at --rate")
    parser.add_argument("--movies", type=int, default=20)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument(
        "--start-minutes-ago",
        type=float,
        default=0.0,
        help="start the event-time clock this far in the past (default: now)",
    )
    parser.add_argument("--step-ms", type=int, help="event time between consecutive events (default: 1000 / rate)")
    parser.add_argument("--jitter-ms", type=int, default=2000, help="bound on out-of-order jitter")
    parser.add_argument("--invalid-fraction", type=float, default=0.0)
    parser.add_argument("--late-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        brokers, client = kafka_settings(args.brokers, os.environ)
    except ValueError as exc:  # ConfigError: one line naming the setting
        parser.exit(2, f"{parser.prog}: {exc}\n")

    if args.count is not None:
        count = args.count
    elif args.duration is not None and args.rate > 0:
        count = int(args.duration * args.rate)
    else:
        count = 1000
    step = args.step_ms if args.step_ms is not None else (int(1000 / args.rate) if args.rate > 0 else 10)
    shape = TrafficShape(
        count=count,
        movies=args.movies,
        users=args.users,
        start_ms=int((time.time() - args.start_minutes_ago * 60) * 1000),
        step_ms=step,
        jitter_ms=args.jitter_ms,
        invalid_fraction=args.invalid_fraction,
        late_fraction=args.late_fraction,
        seed=args.seed,
    )
    try:
        sent = produce(generate(shape), brokers, args.topic, args.rate, progress=True, client=client)
    except ProduceError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    print(f"produced {sent} events to {args.topic} at {brokers}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
