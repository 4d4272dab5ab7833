"""The object sink's resume time: a sink partition starting over output a crashed run wrote past its snapshot.

    python -m bench.resume --writes 64 --folders 20

A partition writes `writes` seqs of `folders` objects each (one unit each) and is never
snapshotted (the crash); a new partition then resumes from no state, so it reads every one
of those manifests back, checks each object landed, and fences every unit. Against the
local S3 server (`make up`), timed in this process; the resume from a stored state with
nothing past it is the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import polars as pl

from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import OUTPUT_SCHEMA
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket

S3 = "http://127.0.0.1:4566"
BUCKET = "bench"


def rows_of(movie: int, window_start: int, users: int = 50) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movieId": [str(movie)] * users,
            "userId": [str(u) for u in range(users)],
            "impressions": [1] * users,
            "latestImpression": [window_start + 1] * users,
            "windowStart": [window_start] * users,
            "windowEnd": [window_start + 900_000] * users,
        },
        schema=OUTPUT_SCHEMA,
    )


def measure(writes: int, folders: int) -> dict:
    location = S3Location(BUCKET, f"resume-{uuid.uuid4().hex[:8]}", S3, "us-east-1")
    sink = PartitionedS3Sink(location, OUTPUT_SCHEMA, "parquet", partitions=1, namespace="bench")
    crashed = sink.build_part("s3_out", "p00", None)
    for seq in range(writes):
        window = 1_546_844_400_000 + seq * 900_000
        crashed.write_batch(
            [ObjectRows(f"{location.root()}w{seq}/{movie}", rows_of(movie, window)) for movie in range(folders)]
        )
        stored = crashed.snapshot()  # commits the seq; the crash means none of these is ever stored
    crashed.close()
    started = time.perf_counter()
    resumed = sink.build_part("s3_out", "p00", None)
    past = time.perf_counter() - started
    fenced = len(resumed.snapshot()["fence"])
    resumed.close()
    started = time.perf_counter()
    sink.build_part("s3_out", "p00", stored).close()
    floor = time.perf_counter() - started
    return {"seconds": past, "floor_seconds": floor, "fenced_units": fenced}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__)
    parser.add_argument("--writes", type=int, default=64, help="seqs past the snapshot (one manifest segment)")
    parser.add_argument("--folders", type=int, default=20, help="objects (units) per write")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    create_bucket(S3, BUCKET)
    result = resume(args.writes, args.folders, args.runs)
    print_line(result)
    return 0


def resume(writes: int, folders: int, runs: int) -> dict:
    results = [measure(writes, folders) for _ in range(runs)]
    out = {key: statistics.median(r[key] for r in results) for key in results[0]}
    return {**out, "writes": writes, "objects": writes * folders}


def print_line(r: dict) -> None:
    print(
        f"object sink resume over {r['writes']} writes / {r['objects']} objects past its snapshot: "
        f"{r['seconds']:.2f} s, {r['fenced_units']:.0f} units fenced (from a stored state with nothing past it: "
        f"{r['floor_seconds']:.2f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
