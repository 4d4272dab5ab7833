"""The job's hot path in one process: batch step -> windows -> S3 sink, no broker, no S3 server.

    python -m bench.pipeline --events 200000 --movies 200 --users 5000

The real flow (`movie_impressions.build_flow`) on the in-memory transport, with the real
S3 sink writing into an in-memory stand-in for the S3 client (so encoding, splitting and
manifests run; the network does not) and a recovery store (snapshots every --epoch
seconds, as `make bench` runs). Prints wall and CPU seconds and events per CPU second:
CPU time depends less than wall time on what else the machine runs; for a deterministic
figure, count instructions: `valgrind --tool=callgrind` of a run minus one with --dry.
`--root DIR` runs another checkout's code (for A/B) with this same harness.
"""

from __future__ import annotations

import argparse
import pickle
import resource
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any


class MemoryS3:
    """The few S3 calls the sink makes, in memory; keeps sizes, not bodies."""

    def __init__(self) -> None:
        self.objects: dict[str, int] = {}
        self.manifests: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **conditions: Any) -> dict:
        if "/_sink/" in Key:
            self.manifests[Key] = Body
        else:
            self.objects[Key] = len(Body)
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict:
        import io

        return {"Body": io.BytesIO(self.manifests[Key])}

    def delete_objects(self, Bucket: str, Delete: dict) -> dict:
        for entry in Delete["Objects"]:
            self.manifests.pop(entry["Key"], None)
            self.objects.pop(entry["Key"], None)
        return {}

    def get_paginator(self, name: str) -> Any:
        store = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str, **_: Any) -> list[dict]:
                keys = sorted(k for k in store.manifests if k.startswith(Prefix) and "/" not in k[len(Prefix) :])
                return [{"Contents": [{"Key": k} for k in keys]}]

        return Pages()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--movies", type=int, default=200)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=50_000, help="KAFKA_BATCH_SIZE")
    parser.add_argument("--epoch", type=float, default=5.0, help="snapshot interval, seconds")
    parser.add_argument("--root", help="run the code of this checkout instead")
    parser.add_argument("--profile", help="write a pyinstrument profile here (text if it ends in .txt, else HTML)")
    parser.add_argument(
        "--dry", action="store_true", help="everything but the run: what to subtract from an instruction count"
    )
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, str(Path(args.root).resolve()))

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    from connectors.sinks.s3_client import S3Location
    from connectors.sinks.s3_objects import PartitionedS3Sink
    from connectors.transports.memory import MemoryTransport
    from dataflows import movie_impressions, skeleton
    from dataflows.impressions.layout import OUTPUT_SCHEMA
    from dataflows.settings import MovieImpressionsSettings
    from producers.movie_impressions import TrafficShape, generate

    shape = TrafficShape(
        count=args.events,
        movies=args.movies,
        users=args.users,
        step_ms=max(1, 4 * 3600 * 1000 // args.events),  # about 4 h of event time, as `make bench`
        jitter_ms=2_000,
        seed=1,
    )
    cached = Path(tempfile.gettempdir()) / f"bench-pipeline-{args.events}-{args.movies}-{args.users}.pickle"
    if cached.exists():  # generating costs more than the run: keep it out of instruction counts
        parts = pickle.loads(cached.read_bytes())
    else:
        parts = [[], []]  # two input partitions, as the bench topics
        for e in generate(shape):
            parts[zlib.crc32(e.key) % 2].append(e.value)
        cached.write_bytes(pickle.dumps(parts))
    settings = replace(MovieImpressionsSettings.from_env({}), bounded=True)
    transport = MemoryTransport({settings.input_topic: parts}, args.batch)
    store = MemoryS3()
    S3Location.client = lambda self: store  # type: ignore[method-assign]
    location = S3Location("bench", "pipeline")
    sink = PartitionedS3Sink(
        location, OUTPUT_SCHEMA, "parquet", settings.sink_partitions, namespace="bench", direct_put=False
    )
    flow = movie_impressions.build_flow(settings, transport, sink)
    if hasattr(skeleton, "tune_garbage_collector"):  # as the job's start-up does (absent from older checkouts)
        skeleton.tune_garbage_collector()
    recovery = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    init_db_dir(recovery, 1)

    if args.dry:
        shutil.rmtree(recovery)
        return 0
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        run_main(flow, epoch_interval=timedelta(seconds=args.epoch), recovery_config=RecoveryConfig(str(recovery)))
    finally:
        shutil.rmtree(recovery)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None:
        profiler.stop()
        text = args.profile.endswith(".txt")
        Path(args.profile).write_text(profiler.output_text(show_all=False) if text else profiler.output_html())
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print(
        f"{args.events:,} events ({args.movies} x {args.users}): wall {wall:.2f} s ({args.events / wall:,.0f}/s), "
        f"CPU {cpu:.2f} s ({args.events / cpu:,.0f}/CPU s); {len(store.objects):,} objects, "
        f"{len(transport.written.get(settings.late_topic, [])):,} late, code {movie_impressions.__file__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
