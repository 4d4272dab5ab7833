"""Reproducible booking traffic: two topics, keyed by booking id.

    python -m producers.bookings --count 2000 --rate 0

Booking i is created at start + i*step (event time). Its booking event follows
(or, for --event-first-fraction of them, precedes) by up to --max-delay-ms. A
--missing-fraction of bookings lack one side, a --duplicate-fraction get one side
sent twice, an --invalid-fraction of messages are malformed. Messages go out in
event-time order, with a jitter below --jitter-ms (bounded disorder).
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

from producers.kafka_producer import ProduceError, kafka_settings, produce_messages
from producers.kinesis_producer import put_messages

EVENT_TYPES = ("PAYMENT_CONFIRMED", "PAYMENT_FAILED", "CANCELLED", "CHECKED_IN")
CURRENCIES = ("EUR", "USD", "GBP", "CHF")


@dataclass(frozen=True)
class BookingTraffic:
    count: int = 1000
    start_ms: int = 1_546_844_400_000
    step_ms: int = 100
    max_delay_ms: int = 60_000
    event_first_fraction: float = 0.3
    missing_fraction: float = 0.1
    duplicate_fraction: float = 0.05
    invalid_fraction: float = 0.0
    jitter_ms: int = 2_000
    seed: int = 0


@dataclass(frozen=True)
class GeneratedBooking:
    side: str  # "created" or "event"
    key: bytes
    value: bytes
    send_at: int  # event time at which it is sent; messages go out in this order
    kind: str  # "valid", "duplicate" or "invalid"
    booking_id: str | None = None
    record: dict | None = None


def generate_bookings(traffic: BookingTraffic) -> list[GeneratedBooking]:
    rng = random.Random(traffic.seed)
    out: list[GeneratedBooking] = []
    for i in range(traffic.count):
        booking_id = f"b-{traffic.seed}-{i}"
        created_at = traffic.start_ms + i * traffic.step_ms
        delay = rng.randrange(traffic.max_delay_ms + 1)
        event_at = created_at - delay if rng.random() < traffic.event_first_fraction else created_at + delay
        created = {
            "bookingId": booking_id,
            "customerId": f"c-{rng.randrange(500)}",
            "amount": round(rng.uniform(10, 2000), 2),
            "currency": rng.choice(CURRENCIES),
            "createdAt": created_at,
        }
        event = {"bookingId": booking_id, "eventType": rng.choice(EVENT_TYPES), "timestamp": event_at}
        sides = [("created", created, created_at), ("event", event, event_at)]
        if rng.random() < traffic.missing_fraction:
            sides.pop(rng.randrange(2))
        for side, record, ts in sides:
            value = json.dumps(record).encode()
            out.append(
                GeneratedBooking(
                    side, booking_id.encode(), value, ts + rng.randrange(traffic.jitter_ms), "valid", booking_id, record
                )
            )
        if rng.random() < traffic.duplicate_fraction:
            side, record, ts = rng.choice(sides)
            out.append(
                GeneratedBooking(
                    side,
                    booking_id.encode(),
                    json.dumps(record).encode(),
                    ts + rng.randrange(traffic.jitter_ms),
                    "duplicate",
                    booking_id,
                    record,
                )
            )
        if rng.random() < traffic.invalid_fraction:
            side = rng.choice(("created", "event"))
            bad = rng.choice(
                [
                    b"{broken",
                    b"[]",
                    json.dumps({**(created if side == "created" else event), "bookingId": ""}).encode(),
                    json.dumps({"bookingId": booking_id}).encode(),
                ]
            )
            out.append(GeneratedBooking(side, booking_id.encode(), bad, created_at, "invalid"))
    out.sort(key=lambda m: m.send_at)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producers.bookings", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=("kafka", "kinesis"), default="kafka")
    parser.add_argument(
        "--brokers",
        help="host:port list (default: KAFKA_BROKERS, else 127.0.0.1:19092); security and any librdkafka "
        "property come from the jobs' settings: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*, "
        "KAFKA_PROPERTIES, KAFKA_PROPERTY_<name> (docs/settings.md)",
    )
    parser.add_argument("--kinesis-endpoint", default="http://127.0.0.1:4568", help="empty: AWS itself")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--created-topic", default="booking-created")
    parser.add_argument("--events-topic", default="booking-events")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second; 0 = as fast as possible")
    parser.add_argument("--count", type=int, default=1000, help="bookings")
    parser.add_argument("--start-minutes-ago", type=float, default=0.0)
    parser.add_argument("--step-ms", type=int, default=100, help="event time between bookings")
    parser.add_argument("--max-delay-ms", type=int, default=60_000, help="largest gap between the two sides")
    parser.add_argument("--event-first-fraction", type=float, default=0.3)
    parser.add_argument("--missing-fraction", type=float, default=0.1)
    parser.add_argument("--duplicate-fraction", type=float, default=0.05)
    parser.add_argument("--invalid-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        brokers, client = kafka_settings(args.brokers, os.environ)
    except ValueError as exc:  # ConfigError: one line naming the setting
        parser.exit(2, f"{parser.prog}: {exc}\n")
    traffic = BookingTraffic(
        count=args.count,
        start_ms=int((time.time() - args.start_minutes_ago * 60) * 1000),
        step_ms=args.step_ms,
        max_delay_ms=args.max_delay_ms,
        event_first_fraction=args.event_first_fraction,
        missing_fraction=args.missing_fraction,
        duplicate_fraction=args.duplicate_fraction,
        invalid_fraction=args.invalid_fraction,
        seed=args.seed,
    )
    messages = generate_bookings(traffic)
    routed = messages_for(messages, args.created_topic, args.events_topic)
    if args.transport == "kinesis":
        sent = put_messages(routed, args.kinesis_endpoint or None, args.region, progress=True)
    else:
        try:
            sent = produce_messages(routed, brokers, args.rate, True, client)
        except ProduceError as exc:
            parser.exit(1, f"{parser.prog}: {exc}\n")
    print(f"produced {sent} messages to {args.created_topic} and {args.events_topic}", file=sys.stderr)
    return 0


def messages_for(
    traffic_messages: list[GeneratedBooking], created_topic: str, events_topic: str
) -> Iterator[tuple[str, bytes, bytes]]:
    topics = {"created": created_topic, "event": events_topic}
    return ((topics[m.side], m.key, m.value) for m in traffic_messages)


if __name__ == "__main__":
    sys.exit(main())
