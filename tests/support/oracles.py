"""Independent expectations computed from the generated input (never from the job's code)."""

from __future__ import annotations

import base64
from collections import Counter

import polars as pl

from producers.bookings import GeneratedBooking
from producers.movie_impressions import GeneratedEvent

WINDOW_MS = 15 * 60 * 1000


def expected_rows(events: list[GeneratedEvent]) -> pl.DataFrame:
    """The oracle: polars over the valid, on-time generated events."""
    valid = pl.DataFrame(
        [(e.movie_id, e.user_id, e.timestamp) for e in events if e.kind == "valid"],
        schema={"movieId": pl.String, "userId": pl.String, "ts": pl.Int64},
        orient="row",
    )
    return (
        valid.with_columns(windowStart=pl.col("ts") - pl.col("ts") % WINDOW_MS)
        .group_by("movieId", "userId", "windowStart")
        .agg(impressions=pl.len().cast(pl.Int64), latestImpression=pl.col("ts").max())
        .with_columns(windowEnd=pl.col("windowStart") + WINDOW_MS)
        .select("movieId", "userId", "impressions", "latestImpression", "windowStart", "windowEnd")
        .sort("movieId", "userId", "windowStart")
    )


def raw_of(record: dict) -> bytes:
    if record["rawEncoding"] == "base64":
        return base64.b64decode(record["raw"])
    return (record["raw"] or "").encode()


def expected_bookings(messages: list[GeneratedBooking]) -> tuple[dict[str, dict], dict[str, str], Counter]:
    """Oracle from the generated traffic: alerts by booking, unmatched side by booking, invalid raws."""
    sides: dict[str, dict[str, dict]] = {}
    for m in messages:
        if m.kind == "valid":
            sides.setdefault(m.booking_id, {})[m.side] = m.record
    alerts, unmatched = {}, {}
    for booking_id, seen in sides.items():
        if len(seen) == 2:
            c, e = seen["created"], seen["event"]
            alerts[booking_id] = {
                "bookingId": booking_id,
                "customerId": c["customerId"],
                "amount": c["amount"],
                "currency": c["currency"],
                "createdAt": c["createdAt"],
                "eventType": e["eventType"],
                "timestamp": e["timestamp"],
                "gapMs": e["timestamp"] - c["createdAt"],
            }
        else:
            [(side, _)] = seen.items()
            unmatched[booking_id] = side
    return alerts, unmatched, Counter(m.value for m in messages if m.kind == "invalid")
