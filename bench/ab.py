"""A/B of two checkouts' job on the same topic, runs interleaved (A, B, A, B, ...).

    git archive main | tar -x -C .cache/base          # the old code, once
    python -m bench.ab --a .cache/base --topic bench-high-1000000 --runs 3

Each run is `make bench`'s (bench/__main__.run_job: bounded, exactly-once into the local
S3, start-up included) with the working directory at that checkout, so `-m bytewax.run`
imports its code. Interleaving spreads what else the machine does over both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import bench.__main__ as bench
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--a", required=True, help="the other checkout (e.g. the old code)")
    parser.add_argument("--b", default=str(bench.ROOT), help="default: this checkout")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    create_bucket(bench.S3, bench.BUCKET)
    sides = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(args.runs):
        for side, root in sides.items():
            bench.ROOT = root  # run_job's working directory: whose code runs
            r = bench.run_job("dataflows.movie_impressions:flow", args.topic, workers=args.workers)
            results[side].append(r)
            print(
                f"run {i + 1} {side}: {r['events_per_s']:,.0f} events/s, {r['seconds']:.1f} s, "
                f"peak {r['peak_mb']:.0f} MB, {r['impressions_out']:,} impressions out",
                flush=True,
            )
    for side, root in sides.items():
        rates = [r["events_per_s"] for r in results[side]]
        print(f"{side} ({root}): median {statistics.median(rates):,.0f} events/s, runs {[f'{x:,.0f}' for x in rates]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
