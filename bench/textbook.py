"""The textbook bytewax design, as the baseline of `make bench` (not a product flow).

fold_window keyed by "movieId:userId", bytewax's stock EventClock, one item per event,
the same Kafka topic and the same S3 sink as the real job. Invalid events are skipped.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
import polars as pl
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow

from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import OUTPUT_SCHEMA, object_folder
from dataflows.settings import MovieImpressionsSettings


def _decode(msg):
    event = json.loads(msg.value)
    return f"{event['movieId']}:{event['userId']}", event


def _row(key_window):
    _, (window_id, (count, latest, movie_id, user_id)) = key_window
    start = window_id * 900_000
    return movie_id, ObjectRows(
        object_folder(PREFIX, start, movie_id),
        pl.DataFrame(
            {
                "movieId": [movie_id],
                "userId": [user_id],
                "impressions": [count],
                "latestImpression": [latest],
                "windowStart": [start],
                "windowEnd": [start + 900_000],
            }
        ),
    )


settings = MovieImpressionsSettings.from_env(os.environ)
PREFIX = settings.s3_prefix
flow = Dataflow("textbook")
events = op.map(
    "decode", op.input("in", flow, KafkaSource(settings.kafka.brokers, [settings.input_topic], tail=False)), _decode
)
windows = win.fold_window(
    "impressions",
    events,
    win.EventClock(
        lambda e: datetime.fromtimestamp(e["timestamp"] / 1000, UTC),
        wait_for_system_duration=settings.max_out_of_orderness,
    ),
    win.TumblingWindower(timedelta(minutes=15), datetime(1970, 1, 1, tzinfo=UTC)),
    lambda: (0, 0, "", ""),
    lambda acc, e: (acc[0] + 1, max(acc[1], e["timestamp"]), e["movieId"], e["userId"]),
    lambda a, b: (a[0] + b[0], max(a[1], b[1]), a[2] or b[2], a[3] or b[3]),
)
location = S3Location(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
op.output("s3", op.map("rows", windows.down, _row), PartitionedS3Sink(location, OUTPUT_SCHEMA))
