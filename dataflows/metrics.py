"""Prometheus metrics of the jobs, beside bytewax's own on its `/metrics` endpoint.

The S3 sink's own (objects, rows) are in connectors/sinks/s3_objects.py, its retries in s3_client.py.

In a pod, bytewax's API server (BYTEWAX_DATAFLOW_API_ENABLED=true, port 3030) serves
these with the engine's; locally, METRICS_PORT starts a loopback-only server for them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

from dataflows.dead_letters import DeadLetter, LateEvent
from dataflows.event_time import NO_WATERMARK

log = logging.getLogger(__name__)

EVENTS = Counter("waxstreams_events_total", "Input messages by job and outcome", ["job", "outcome"])
INTERNAL_ERRORS = Counter(
    "waxstreams_internal_errors_total",
    "Input records our own code failed on (a bug: alert on any increase); they are in the dead-letter topic",
    ["job"],
)
OUTPUT_REFUSED = Counter(
    "waxstreams_output_refused_total",
    "Output records over their stream's record limit, sent to the dead letters instead",
    ["job", "stream"],
)
BOOKING_OUTCOMES = Counter("waxstreams_booking_outcomes_total", "Correlation results", ["outcome"])
KEYS_IN_STATE = Gauge(
    "waxstreams_keys_in_state", "Bookings, or movies with an open window, holding state (per process)", ["job"]
)
WATERMARK_LAG = Gauge("waxstreams_watermark_lag_seconds", "Wall clock minus the event-time watermark", ["job"])


def count_inputs(job: str, messages: int, items: list) -> None:
    """Count one input batch of `messages` by outcome, from what the batch step made of it."""
    invalid = internal = late = 0
    for item in items:
        if isinstance(item, DeadLetter):
            if item.internal:
                internal += 1
            else:
                invalid += 1
        elif isinstance(item, LateEvent):
            late += 1
    EVENTS.labels(job, "invalid").inc(invalid)
    EVENTS.labels(job, "internal_error").inc(internal)
    INTERNAL_ERRORS.labels(job).inc(internal)
    EVENTS.labels(job, "late").inc(late)
    EVENTS.labels(job, "valid").inc(messages - invalid - internal - late)


def run_summary(job: str, elapsed_s: float) -> str:
    """One line at the end of a bounded run, from this process's counters."""
    sample = REGISTRY.get_sample_value

    def events(outcome: str) -> int:
        return int(sample("waxstreams_events_total", {"job": job, "outcome": outcome}) or 0)

    counts = {o: events(o) for o in ("valid", "invalid", "internal_error", "late")}
    line = (
        f"run summary: {sum(counts.values()):,} events in ({counts['valid']:,} valid, "
        f"{counts['invalid']:,} dead letters, {counts['internal_error']:,} internal errors, {counts['late']:,} late)"
    )
    rows = sample("waxstreams_s3_rows_written_total")
    if rows is not None:
        line += f", {int(rows):,} rows in {int(sample('waxstreams_s3_objects_written_total') or 0):,} objects"
    if job == "booking_correlation":
        outcomes = {
            o: int(sample("waxstreams_booking_outcomes_total", {"outcome": o}) or 0) for o in ("alert", "unmatched")
        }
        line += f", {outcomes['alert']:,} alerts, {outcomes['unmatched']:,} unmatched"
    return f"{line}, {elapsed_s:,.1f} s"


def record_watermark_lag(job: str) -> Callable[[int], None]:
    """A WorkerWatermarks `on_commit` for the job's watermark-lag gauge.

    The lag is taken at scrape time against the slowest worker's committed watermark,
    so a stalled job's lag keeps growing instead of freezing at its last commit.
    """
    committed: dict[int, int] = {}  # worker thread -> its last committed watermark
    lock = threading.Lock()

    def lag_s() -> float:
        with lock:
            slowest = min(committed.values(), default=None)
        return math.nan if slowest is None else time.time() - slowest / 1000

    WATERMARK_LAG.labels(job).set_function(lag_s)

    def record(watermark_ms: int) -> None:
        if watermark_ms != NO_WATERMARK:
            with lock:
                committed[threading.get_ident()] = watermark_ms

    return record


def serve(port: int | None) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1")
        log.info("metrics on http://127.0.0.1:%d/metrics", port)
