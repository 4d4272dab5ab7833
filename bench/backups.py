"""What the recovery store's S3 backups cost the movie-impressions job (connectors/backup.py).

    python -m bench.backups --events 200000 --runs 1

`make bench` runs it on its `high` topic. The job runs as bench/job.py runs it
(bounded, 1 worker, exactly-once into S3) with backups off and at each of INTERVALS, in
one session, the order rotated from run to run so that drift on a shared machine favours
no configuration; figures are medians, and the throughput ratio is the median of each
run's backups-on / backups-off pair. Each backups-on run backs up into a bucket of its
own and keeps every round (BACKUP_RETENTION high), so the rounds can be counted after it.
A round's size is the sum of the largest round's objects in S3; its seconds are what its
manifest records (the copy, gzip and upload, timed by the job). One process, so bytewax
keeps no snapshot history (-b 0); a cluster runs with -b of at least the interval, which
makes the copies larger.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from connectors import backup_layout as layout
from connectors.backup_store import BackupConfig, BackupStore
from devstack.s3 import LOCAL_CREDENTIALS, create_bucket, delete_bucket

S3 = "http://127.0.0.1:4566"
FLOW = "dataflows.movie_impressions:flow"
INTERVALS = (10.0, 1.0)  # BACKUP_INTERVAL_SECONDS: a realistic one, and a harsh one
OFF = "off"
PREFIX, RUN = "state", "bench"
KEEP_ALL = 100_000  # BACKUP_RETENTION: no round pruned, so every round taken can be counted


def label(interval: float) -> str:
    return f"every {interval:g} s"


def orders(configs: Sequence[str], runs: int) -> list[list[str]]:
    """Run i starts with configuration i (mod n): over n runs each takes every place once."""
    n = len(configs)
    return [[*configs[i % n :], *configs[: i % n]] for i in range(runs)]


def raw_bytes(manifests: Sequence[layout.Manifest]) -> int:
    return sum(int(f["bytes"]) for m in manifests for f in m.files)


def largest(rounds: Mapping[str, Sequence[layout.Manifest]]) -> str:
    """The round that copied the most state: in a bounded run the newest may hold almost
    none (taken once the windows closed), so the largest says what a round costs a live job."""
    return max(rounds, key=lambda name: (raw_bytes(rounds[name]), name))


def round_figures(rounds: Mapping[str, Sequence[layout.Manifest]]) -> dict:
    """The periodic rounds of one run, by name: how many, and what one cost.

    A round's seconds are its slowest copy's (the processes copy at once)."""
    if not rounds:
        return {"rounds": 0, "seconds_per_round": None, "max_seconds_per_round": None, "raw_bytes_per_round": None}
    seconds = [max(m.seconds for m in manifests) for manifests in rounds.values()]
    return {
        "rounds": len(rounds),
        "seconds_per_round": statistics.median(seconds),
        "max_seconds_per_round": max(seconds),
        "raw_bytes_per_round": raw_bytes(rounds[largest(rounds)]),
    }


def medians(results: Sequence[Mapping[str, float | None]]) -> dict:
    """Per key, the median of the runs that measured it (None if none did)."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def largest_of(results: Sequence[Mapping[str, float | None]]) -> dict:
    """The largest round and the slowest of all runs: whether a tick lands while the store
    holds open windows is luck in a short bounded run, so the median could miss them."""
    keys = ("bytes_per_round", "raw_bytes_per_round", "max_seconds_per_round")
    return {key: max((v for r in results if (v := r.get(key)) is not None), default=None) for key in keys}


def paired_ratio(on: Sequence[Mapping], off: Sequence[Mapping], key: str) -> float:
    """The median over runs of on / off: each run's pair ran back to back."""
    return statistics.median(a[key] / b[key] for a, b in zip(on, off, strict=True))


def summarize(topic: str, events: int, by_config: Mapping[str, Sequence[dict]]) -> dict:
    """The JSON `make bench` writes under "backups" (bench/report.py renders it)."""
    off = by_config[OFF]
    outputs = {r["impressions_out"] for runs in by_config.values() for r in runs}
    result: dict = {"topic": topic, "events": events, "runs": len(off), "off": medians(off), "intervals": {}}
    for interval in INTERVALS:
        on = by_config[label(interval)]
        figures = medians(on) | largest_of(on)
        figures["vs_off"] = paired_ratio(on, off, "events_per_s")
        figures["cpu_vs_off"] = paired_ratio(on, off, "cpu_seconds")
        spent = figures["seconds_per_round"]
        figures["share_of_interval"] = None if spent is None else spent / interval
        result["intervals"][f"{interval:g}"] = figures
    result["same_output"] = len(outputs) == 1  # backups must not change what the job writes
    return result


def read_rounds(bucket: str) -> dict:
    """What the backups of one run left in S3 (`bucket`, PREFIX, RUN)."""
    store = BackupStore(BackupConfig(bucket, PREFIX, RUN, S3, "us-east-1"))
    rounds = {name: ms for (kind, name), ms in store.rounds().items() if kind == layout.BACKUPS}
    figures = round_figures(rounds)
    figures["bytes_per_round"] = None
    if rounds:
        under = layout.round_dir(store.root, RUN, layout.BACKUPS, largest(rounds))
        pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=under)
        figures["bytes_per_round"] = sum(o["Size"] for page in pages for o in page.get("Contents", []))
    return figures


def one_run(config: str, topic: str, run_job: Callable[..., dict]) -> dict:
    if config == OFF:
        return run_job(FLOW, topic)
    interval = next(i for i in INTERVALS if label(i) == config)
    bucket = f"bench-backups-{uuid.uuid4().hex[:8]}"  # its own: listing it lists only this run's rounds
    create_bucket(S3, bucket)
    env = {
        "BACKUP_INTERVAL_SECONDS": f"{interval:g}",
        "BACKUP_S3_BUCKET": bucket,
        "BACKUP_S3_PREFIX": PREFIX,
        "BACKUP_RUN": RUN,
        "BACKUP_RETENTION": str(KEEP_ALL),
    }
    try:
        return {**run_job(FLOW, topic, env=env), **read_rounds(bucket)}
    finally:
        delete_bucket(S3, bucket)


def compare(topic: str, events: int, runs: int) -> dict:
    """Backups off and at each interval, interleaved; bench/job.py's job runs."""
    from bench.job import run_job

    configs = [OFF, *(label(i) for i in INTERVALS)]
    by_config: dict[str, list[dict]] = {c: [] for c in configs}
    for order in orders(configs, runs):
        for config in order:
            print(f"   backups {config} on {topic}", file=sys.stderr)
            by_config[config].append(one_run(config, topic, run_job))
    return summarize(topic, events, by_config)


def print_table(r: dict) -> None:
    from bench.report import backups_section

    print("\n".join(backups_section(r)))


def main() -> int:
    from bench.stack import Workload, load

    parser = argparse.ArgumentParser(prog="python -m bench.backups", description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000, help="the size of make bench's `high` workload")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    workload = Workload("high", args.events, 200, 5_000)
    load(workload)
    result = compare(workload.topic, args.events, args.runs)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
