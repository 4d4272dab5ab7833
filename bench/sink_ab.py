"""A/B of two checkouts' object sink alone, on the rows the job closes, runs interleaved.

    python -m bench.sink_ab --dump .cache/sink-high.pkl --topic bench-high-2000000   # once: read, step, close
    python -m bench.sink_ab --rows .cache/sink-high.pkl --a .cache/base --runs 5    # A: another checkout (bench.ab)

The rows (`bench.breakdown.step_and_close`'s items) are made once and kept in a file; each
run is a fresh process at a checkout (its code imported) that writes them through its
`PartitionedS3Sink` into the local S3 as `bench.breakdown.write` does, and reports the
process's CPU (all threads) and wall over the write, per event of the topic. The local S3
server shares the machine: the CPU it spent over each run (the process listening on the
endpoint's port, from /proc) is reported beside the sink's, as a change can move cost
between them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from bench.stack import process_cpu

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, pickle, sys, time, gc
from dataclasses import replace
from bench.breakdown import Stopwatch, write
from dataflows.settings import MovieImpressionsSettings
from dataflows.skeleton import GC_THRESHOLDS
with open(sys.argv[1], "rb") as f:
    dumped = pickle.load(f)
settings = replace(MovieImpressionsSettings.from_env({}), s3_prefix="sink-ab", bounded=True, output_format=sys.argv[2])
gc.set_threshold(*GC_THRESHOLDS)
watch = Stopwatch()
write(settings, dumped["closes"], watch)
print(json.dumps({"wall": watch.wall, "cpu": watch.cpu, "events": dumped["events"]}))
"""


def dump(topic: str, path: Path) -> None:
    from bench.breakdown import Stopwatch, read_confluent, step_and_close
    from bench.stack import topic_size
    from dataflows.settings import MovieImpressionsSettings

    settings = replace(MovieImpressionsSettings.from_env({"IMPRESSIONS_TOPIC": topic}), bounded=True)
    watch = Stopwatch()
    batches = read_confluent(topic, settings.kafka_batch_size, watch)
    closes = step_and_close(settings, batches, Stopwatch(), Stopwatch())
    with path.open("wb") as f:
        pickle.dump({"events": topic_size(topic), "closes": closes}, f)


def run(root: Path, rows: Path, fmt: str, server: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    before = process_cpu(server)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(rows), fmt], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    # The server's CPU over the whole child (its start-up requests too: a few, beside ~1,000 PUTs).
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "server": process_cpu(server) - before}


def main() -> int:
    from devstack.s3 import LOCAL_CREDENTIALS

    parser = argparse.ArgumentParser(prog="python -m bench.sink_ab", description=__doc__)
    parser.add_argument("--dump", type=Path, help="make the rows file from --topic")
    parser.add_argument("--topic", default="bench-high-2000000")
    parser.add_argument("--rows", type=Path, help="the rows file to write")
    parser.add_argument("--a", help="the other checkout")
    parser.add_argument("--b", default=str(ROOT))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    parser.add_argument("--s3-pid", type=int, help="the local S3 server's pid: its CPU per run is reported too")
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    if args.dump:
        dump(args.topic, args.dump)
        return 0
    sides = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(args.runs):
        for side, root in sides.items():
            r = run(root, args.rows.resolve(), args.format, args.s3_pid)
            results[side].append(r)
            us = 1e6 / r["events"]
            print(
                f"run {i + 1} {side}: CPU {r['cpu'] * us:.3f} µs/event, wall {r['wall'] * us:.3f} µs/event, "
                f"S3 server CPU {r['server'] * us:.3f} µs/event",
                flush=True,
            )
    for side, root in sides.items():
        us = 1e6 / results[side][0]["events"]
        cpu, wall, server = ([round(r[k] * us, 3) for r in results[side]] for k in ("cpu", "wall", "server"))
        print(
            f"{side} ({root}): median CPU {statistics.median(cpu):.3f} µs/event {cpu}, "
            f"wall {statistics.median(wall):.3f} {wall}, S3 server CPU {statistics.median(server):.3f} {server}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
