"""Topics and buckets of a test: make them, and read back what the jobs wrote."""

from __future__ import annotations

import io
from collections import defaultdict

import polars as pl

from dataflows.impressions.layout import OUTPUT_SCHEMA
from devstack.committed import read_committed
from devstack.kafka import KafkaBroker, create_topics
from devstack.s3 import S3Server


def make_topics(kafka: KafkaBroker, *names: str, partitions: int = 2) -> None:
    create_topics(kafka.setup_bootstrap, list(names), partitions)


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) in a topic, read from the beginning to the current end."""
    return [record for records in read_partitions(bootstrap, topic).values() for record in records]


def read_partitions(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Every (key, value) of every partition of a topic, in order, to its current end, as its
    readers must read the jobs' transactional outputs (devstack.committed)."""
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)

    def keep(partition: int, key: bytes | None, value: bytes | None) -> None:
        out[partition].append((key, value))

    return {p: out[p] for p in read_committed(bootstrap, topic, keep)}


def read_s3_rows(server: S3Server, bucket: str, prefix: str, fmt: str = "parquet") -> pl.DataFrame:
    """Every data object under prefix (not the sink's manifests), with an `object` column."""
    client = server.client()
    frames = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            if "/_sink/" in key:
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            frame = (
                pl.read_parquet(io.BytesIO(body))
                if fmt == "parquet"
                else pl.read_csv(io.BytesIO(body), schema=OUTPUT_SCHEMA)  # as docs/querying.md advises
            )
            frames.append(frame.with_columns(object=pl.lit(key)))
    return pl.concat(frames) if frames else pl.DataFrame()
