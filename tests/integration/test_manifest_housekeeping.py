"""The object sink's manifests stay few: start-up does not read an ever-growing history."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from connectors.sinks.fence import CommitState
from connectors.sinks.object_bodies import encode
from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import NativePut, S3Location
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import OUTPUT_SCHEMA
from tests.support.data import read_s3_rows


@dataclass(frozen=True)
class CountingLocation(S3Location):
    """Counts the S3 operations of every client the sink makes from it (PUTs sent by obstore
    instead: `count_native_puts`)."""

    calls: ClassVar[Counter[str]] = Counter()

    def client(self) -> Any:
        client = super().client()
        client.meta.events.register("before-call.s3", lambda model, **_: CountingLocation.calls.update([model.name]))
        return client


def count_native_puts(monkeypatch) -> None:
    put = NativePut.put_object
    monkeypatch.setattr(
        NativePut, "put_object", lambda self, **kw: CountingLocation.calls.update(["PutObject"]) or put(self, **kw)
    )


def rows(movie: str, user: str) -> ObjectRows:
    return ObjectRows(
        f"out/2019-01-07--07/{movie}",
        pl.DataFrame(
            {
                "movieId": [movie],
                "userId": [user],
                "impressions": [1],
                "latestImpression": [1],
                "windowStart": [0],
                "windowEnd": [900_000],
            }
        ),
    )


def keys(s3, bucket: str, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def listed_objects(s3, bucket: str) -> set[str]:
    client = s3.client()
    return {
        key
        for manifest in keys(s3, bucket, "out/_sink/")
        for key in json.loads(client.get_object(Bucket=bucket, Key=manifest)["Body"].read())["objects"]
    }


def start_up_calls(s3, unique: str, history: int) -> tuple[Counter[str], set[str]]:
    """S3 calls of a resume over `history` committed manifests plus two uncommitted writes."""
    bucket = f"hk-{unique}-{history}"
    s3.create_bucket(bucket)
    client = s3.client()

    def manifest(seq: int) -> None:
        # History as an older release left it: one manifest per committed write (what compaction now folds).
        body = {"seq": seq, "objects": [f"out/data/{seq}.parquet"]}
        client.put_object(Bucket=bucket, Key=f"out/_sink/p00/run-a/{seq:012d}.json", Body=json.dumps(body).encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(manifest, range(history + 2)))
    for seq in (history, history + 1):  # written after the snapshot bytewax stored: uncommitted
        client.put_object(
            Bucket=bucket, Key=f"out/data/{seq}.parquet", Body=encode(rows(f"m{seq}", "u1").rows, "parquet")
        )

    sink = PartitionedS3Sink(CountingLocation(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA)
    CountingLocation.calls.clear()
    sink.build_part("s3_out", "p00", ("run-a", history)).snapshot()  # the resume (a snapshot waits for it)
    calls = Counter(CountingLocation.calls)
    assert len(keys(s3, bucket, "out/data/")) == 2, "the writes past the snapshot stay"
    return calls, keys(s3, bucket, "out/_sink/")


def test_start_up_requests_do_not_grow_with_the_manifest_history(s3, unique, monkeypatch) -> None:
    count_native_puts(monkeypatch)
    short, _ = start_up_calls(s3, unique, 100)
    long, manifests = start_up_calls(s3, unique, 2000)
    assert long == short, f"start-up with 2,000 manifests made {dict(long)}, with 100 {dict(short)}"
    # One listing from the window on; the window's 64 committed manifests and the 2 uncommitted read,
    # and the 2 objects these list (is it there, then its units); the 66 folded into one segment
    # (1 PUT, 1 batch delete).
    assert long == Counter(ListObjectsV2=1 + 2, GetObject=64 + 2 + 2, PutObject=1, DeleteObjects=1)
    assert "out/_sink/p00/run-a/000000002001-from-000000001936.json" in manifests
    assert len(manifests) == 1936 + 1, "older manifests are left as they were (never listed again)"


def test_a_long_run_folds_its_manifests_and_lists_every_object(s3, unique) -> None:
    bucket = f"hk-run-{unique}"
    s3.create_bucket(bucket)
    sink = PartitionedS3Sink(
        S3Location(bucket, "out", s3.endpoint_url, "us-east-1"),
        OUTPUT_SCHEMA,
        namespace="run-a",
        manifests_per_segment=8,
    )
    part = sink.build_part("s3_out", "p00", None)
    for seq in range(60):
        part.write_batch([rows(f"m{seq}", "u1")])
        part.snapshot()
    manifests = keys(s3, bucket, "out/_sink/")
    single = [k for k in manifests if "-from-" not in k]
    assert len(single) < 8, sorted(single)
    assert len(manifests) - len(single) == 60 // 8, "one segment per 8 writes"
    assert listed_objects(s3, bucket) == keys(s3, bucket, "out/2019")
    assert read_s3_rows(s3, bucket, "out").height == 60


def test_a_resume_into_a_segment_keeps_and_skips_exactly_the_seqs_past_its_snapshot(s3, unique) -> None:
    bucket = f"hk-seg-{unique}"
    s3.create_bucket(bucket)
    sink = PartitionedS3Sink(
        S3Location(bucket, "out", s3.endpoint_url, "us-east-1"),
        OUTPUT_SCHEMA,
        namespace="run-a",
        manifests_per_segment=8,
    )
    part = sink.build_part("s3_out", "p00", None)
    for seq in range(20):  # seqs 0..7 and 8..15 in segments, 16..19 single manifests
        part.write_batch([rows(f"m{seq:02d}", "u1")])
        part.snapshot()
    assert any(k.endswith("000000000015-from-000000000008.json") for k in keys(s3, bucket, "out/_sink/"))

    resumed = sink.build_part("s3_out", "p00", ("run-a", 13))  # bytewax's last stored snapshot: seqs 0..12
    written = [f"m{seq:02d}" for seq in range(20)]
    assert sorted(read_s3_rows(s3, bucket, "out")["movieId"]) == written, "nothing is taken back"
    assert listed_objects(s3, bucket) == keys(s3, bucket, "out/2019"), "an object outside every manifest"
    resumed.write_batch([rows(f"m{seq:02d}", "u1") for seq in range(13, 21)])  # the replay, and one more
    assert resumed.snapshot() == CommitState("run-a", 21).to_snapshot()
    resumed.close()
    assert sorted(read_s3_rows(s3, bucket, "out")["movieId"]) == [*written, "m20"]
    assert listed_objects(s3, bucket) == keys(s3, bucket, "out/2019")
