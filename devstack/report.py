"""`python -m devstack.report [bookings]`: what a job wrote to the local stack."""

from __future__ import annotations

import os
import sys

import polars as pl
from confluent_kafka import Consumer

from connectors.transports.kinesis.proxy import kinesis_client
from connectors.transports.kinesis.settings import KinesisSettings
from dataflows.settings import BookingSettings, KafkaSettings, MovieImpressionsSettings
from devstack.committed import read_committed
from devstack.kinesis import read_stream


def topic_size(brokers: str, topic: str) -> int:
    """Messages a `read_committed` reader finds in a topic: the jobs' outputs are transactional,
    so offsets also count commit markers and aborted records."""
    count = 0

    def tally(_partition: int, _key: bytes | None, _value: bytes | None) -> None:
        nonlocal count
        count += 1

    read_committed(brokers, topic, tally)
    return count


def bookings_report() -> int:
    settings = BookingSettings.from_env(os.environ)
    streams = (
        ("created", settings.created_topic),
        ("events", settings.events_topic),
        ("alerts", settings.alerts_topic),
        ("unmatched", settings.unmatched_topic),
        ("dead-letter", settings.dead_letter_topic),
    )
    if settings.transport == "kinesis":
        kinesis = KinesisSettings.from_env(os.environ)
        client = kinesis_client(kinesis.endpoint_url, kinesis.region, max_attempts=3)
        records = {s: [data for _, data in read_stream(client, s)] for _, s in streams}
        for label, stream in streams:
            print(f"  {label:12s} Kinesis stream {stream}: {len(records[stream])} records")
        alerts = records[settings.alerts_topic]
        if alerts:
            print(f"\nan alert: {alerts[0].decode()}")
        return 0
    brokers = ",".join(settings.kafka.brokers)
    for label, topic in streams:
        print(f"  {label:12s} topic {topic}: {topic_size(brokers, topic)} messages")
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "devstack-report", "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.alerts_topic])
    msg = consumer.poll(10)
    if msg is not None and msg.error() is None:
        print(f"\nan alert: {msg.value().decode()}")
    consumer.close()
    return 0


def delta_report(settings: MovieImpressionsSettings) -> int:
    """OUTPUT_FORMAT=delta: the table through its log, as readers see it."""
    from connectors.sinks.delta_table import DeltaLocation

    location = DeltaLocation(settings.delta_table_uri, settings.s3_endpoint_url, settings.s3_region)
    table = location.open()
    rows = pl.read_delta(table)
    print(f"\nDelta table {location.uri} (endpoint {settings.s3_endpoint_url}), version {table.version()}:")
    print(f"  {len(table.file_uris())} files, {rows.height} rows, {rows['impressions'].sum()} impressions")
    print(rows.group_by("windowHour").agg(rows=pl.len(), movies=pl.col("movieId").n_unique()).sort("windowHour"))
    print("\nRead it yourself (the local S3 accepts any AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment):")
    options = {"AWS_ENDPOINT_URL": settings.s3_endpoint_url or "", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    print(f"  polars.scan_delta('{location.uri}', storage_options={options!r})")
    return 0


def main() -> int:
    if sys.argv[1:] == ["bookings"]:
        return bookings_report()
    settings = MovieImpressionsSettings.from_env(os.environ)
    kafka = settings.kafka or KafkaSettings.from_env(os.environ, check=False)  # the input topic's, on any transport
    brokers = ",".join(kafka.brokers)
    root = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
    options = {
        "aws_endpoint_url": settings.s3_endpoint_url or "",
        "aws_region": settings.s3_region or "us-east-1",
        "aws_allow_http": "true",
    }
    if settings.output_format == "delta":
        return delta_report(settings)
    pattern = f"{root}/**/*.{settings.output_format}"
    scan = pl.scan_parquet if settings.output_format == "parquet" else pl.scan_csv
    rows = scan(pattern, storage_options=options, include_file_paths="object").collect()  # type: ignore[operator]
    print(f"\nS3 output under {root}/ (endpoint {settings.s3_endpoint_url}):")
    print(f"  {rows['object'].n_unique()} objects, {rows.height} rows, {rows['impressions'].sum()} impressions")
    hours = rows.group_by(pl.col("object").str.extract(r"/(\d{4}-\d\d-\d\d--\d\d)/").alias("hour"))
    print(hours.agg(objects=pl.col("object").n_unique(), rows=pl.len()).sort("hour"))
    print(rows.drop("object").sort("windowStart", "movieId", "userId").head(8))
    for label, topic in (
        ("input", settings.input_topic),
        ("dead-letter", settings.dead_letter_topic),
        ("late", settings.late_topic),
    ):
        print(f"  {label:12s} topic {topic}: {topic_size(brokers, topic)} messages")
    print("\nRead it yourself (the local S3 accepts any AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment):")
    print(f"  polars.scan_parquet('{pattern}', storage_options={options!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
