"""A/B of two checkouts' job on the same topic, runs interleaved (A, B, A, B, ...).

    git archive main | tar -x -C .cache/base          # the old code, once
    python -m bench.ab --a .cache/base --topic bench-high-1000000 --runs 3
    python -m bench.ab --a .cache/base --topic bench-high-2h-500000 --topic bench-high-1000000  # + steady state
    python -m bench.ab --a . --b-env KAFKA_READER=native --topic bench-high-2000000  # one checkout, two settings

Each run is `make bench`'s (bench/job.run_job: bounded, exactly-once into the local
S3, start-up included) with the working directory at that checkout, so `-m bytewax.run`
imports its code. Interleaving spreads what else the machine does over both sides. With
two topics (a topic's first half in event time, then the topic), each side's steady state
too (bench/steady.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from bench.job import FLOW, run_job
from bench.stack import BUCKET, ROOT, S3, topic_size
from bench.steady import report
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--a", required=True, help="the other checkout (e.g. the old code)")
    parser.add_argument("--b", default=str(ROOT), help="default: this checkout")
    parser.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for A's runs")
    parser.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for B's runs")
    parser.add_argument("--topic", required=True, action="append", help="repeat for more topics")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    create_bucket(S3, BUCKET)
    sides = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    envs = {"A": dict(e.split("=", 1) for e in args.a_env), "B": dict(e.split("=", 1) for e in args.b_env)}
    results: dict[tuple[str, str], list[dict]] = {(side, topic): [] for side in sides for topic in args.topic}
    for i in range(args.runs):
        for topic in args.topic:
            for side, root in sides.items():
                r = run_job(FLOW, topic, workers=args.workers, env=envs[side], root=root)  # root: whose code runs
                results[side, topic].append(r)
                print(
                    f"run {i + 1} {side} {topic}: {r['events_per_s']:,.0f} events/s, {r['seconds']:.1f} s, "
                    f"job CPU {r['cpu_seconds']:.1f} s, peak {r['peak_mb']:.0f} MB, {r['impressions_out']:,} out",
                    flush=True,
                )
    for side, root in sides.items():
        seconds = {}
        for topic in args.topic:
            runs = results[side, topic]
            rates = [round(r["events_per_s"]) for r in runs]
            seconds[topic] = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            settings = "".join(f" {k}={v}" for k, v in envs[side].items())
            print(
                f"{side} ({root}{settings}) {topic}: median {statistics.median(rates):,.0f} events/s (runs {rates}), "
                f"job CPU median {cpu:.1f} s = {runs[0]['impressions_out'] / cpu:,.0f} events per CPU second"
            )
        if len(args.topic) == 2:
            small, large = ((topic_size(t), seconds[t]) for t in args.topic)
            print(report(f"{side} ({root})", small, large))
    return 0


if __name__ == "__main__":
    sys.exit(main())
