"""The booking job's throughput: this checkout's exactly-once outputs against another checkout's.

    python -m bench.bookings --bookings 100000 --a .cache/bench-flush-per-batch

`make bench` runs it with the last commit whose Kafka outputs flushed after every batch
(bytewax's KafkaSink, at-least-once, `FLUSH_PER_BATCH`) as the other side, checked out with
`git archive`, so both sides run in the same session on the same topics, interleaved.
Each run is bounded, from a fresh recovery store into fresh output topics; events/s are
input messages over the process's wall time, start-up included. `waiting_keys` measures
the job's CPU while it only holds keys waiting for the watermark (real time, no input).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from connectors.transports.kafka_control import CONTROL_SUFFIX
from devstack.kafka import create_topics, delete_topics
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages

BROKERS = "127.0.0.1:19092"
ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("ALERTS_TOPIC", "UNMATCHED_TOPIC", "DEAD_LETTER_TOPIC")  # the job's output settings
# The last commit whose Kafka outputs were bytewax's KafkaSink (a flush after every batch).
FLUSH_PER_BATCH = "c001e74"


def topics(bookings: int) -> tuple[str, str]:
    return f"bench-bookings-created-{bookings}", f"bench-bookings-events-{bookings}"


def load(bookings: int) -> int:
    """Produce the workload once (later runs reuse it); the number of input messages."""
    from bench.stack import topic_size

    created, events = topics(bookings)
    messages = generate_bookings(BookingTraffic(count=bookings, step_ms=50, invalid_fraction=0.001, seed=3))
    if topic_size(created) + topic_size(events) != len(messages):
        create_topics(BROKERS, [created, events], partitions=2)
        print(f"loading {len(messages):,} booking records ...", file=sys.stderr)
        produce_messages(messages_for(messages, created, events), BROKERS)
    return len(messages)


def checkout(commit: str) -> Path:
    """`commit`'s tree in .cache (made once): the other side of the comparison."""
    target = ROOT / ".cache" / f"bench-{commit}"
    if not (target / "dataflows").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run(root: Path, bookings: int, messages: int) -> dict:
    created, events = topics(bookings)
    run_id = uuid.uuid4().hex[:8]
    outputs = {
        "ALERTS_TOPIC": f"bench-alerts-{run_id}",
        "UNMATCHED_TOPIC": f"bench-unmatched-{run_id}",
        "DEAD_LETTER_TOPIC": f"bench-dead-{run_id}",
    }
    create_topics(BROKERS, list(outputs.values()), partitions=2)
    recovery = Path(tempfile.mkdtemp(prefix="bench-bookings-"))
    try:
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
        env = {
            **os.environ,
            **outputs,
            "KAFKA_BROKERS": BROKERS,
            "CREATED_TOPIC": created,
            "EVENTS_TOPIC": events,
            "BOUNDED": "true",
            "PYTHONPATH": str(root),
        }
        argv = ["/usr/bin/time", "-f", "%M %U %S", sys.executable, "-m", "bytewax.run"]
        argv += ["dataflows.booking_correlation:flow", "-r", str(recovery), "-s", "5", "-b", "0"]
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            msg = f"the booking job at {root} failed:\n{done.stderr[-3000:]}"
            raise RuntimeError(msg)
        peak_kb, user, system = done.stderr.strip().splitlines()[-1].split()
        return {
            "seconds": elapsed,
            "events_per_s": messages / elapsed,
            "cpu_seconds": float(user) + float(system),
            "peak_mb": int(peak_kb) / 1024,
        }
    finally:
        shutil.rmtree(recovery, ignore_errors=True)
        # The outputs and their sinks' commit logs.
        delete_topics(BROKERS, [name + suffix for name in outputs.values() for suffix in ("", CONTROL_SUFFIX)])


def waiting_keys(keys: int = 100_000, epoch_s: int = 10, seconds: float = 20.0) -> dict:
    """The job's CPU while it holds `keys` bookings waiting for their counterparts and no input
    comes (real time, unbounded, `-s epoch_s`): what waiting keys cost by themselves (wakes,
    snapshots), measured over `seconds` once two epochs have passed since the keys were read."""
    from bench.stack import process_cpu, topic_size

    created, events = f"bench-waiting-created-{keys}", f"bench-waiting-events-{keys}"
    if topic_size(created) != keys:
        create_topics(BROKERS, [created, events], partitions=2)
        start = 1_700_000_000_000  # 5 ms apart: all within one timeout (15 min), none times out
        fields = {"customerId": "c", "amount": 1.0, "currency": "EUR"}
        records = (
            (f"b{i}", json.dumps({"bookingId": f"b{i}", "createdAt": start + 5 * i, **fields}).encode())
            for i in range(keys)
        )
        produce_messages(((created, key.encode(), value) for key, value in records), BROKERS)
    run_id = uuid.uuid4().hex[:8]
    outputs = {name: f"bench-waiting-{name.lower()}-{run_id}" for name in OUTPUTS}
    create_topics(BROKERS, list(outputs.values()), partitions=2)
    recovery = Path(tempfile.mkdtemp(prefix="bench-waiting-"))
    try:
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
        env = {**os.environ, **outputs, "KAFKA_BROKERS": BROKERS, "CREATED_TOPIC": created, "EVENTS_TOPIC": events}
        argv = [sys.executable, "-m", "bytewax.run", "dataflows.booking_correlation:flow", "-r", str(recovery)]
        job = subprocess.Popen([*argv, "-s", str(epoch_s), "-b", "0"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2 * epoch_s + 5)  # read the keys, then two epochs: they wake as they will from now on
            cpu, wall = process_cpu(job.pid), time.monotonic()
            time.sleep(seconds)
            share = (process_cpu(job.pid) - cpu) / (time.monotonic() - wall)
        finally:
            job.kill()
            job.wait()
        return {"keys": keys, "epoch_s": epoch_s, "seconds": seconds, "cpu_share": share}
    finally:
        shutil.rmtree(recovery, ignore_errors=True)
        delete_topics(BROKERS, [name + suffix for name in outputs.values() for suffix in ("", CONTROL_SUFFIX)])


def compare(other: Path, bookings: int, runs: int) -> dict:
    """Interleaved runs of both sides; medians."""
    messages = load(bookings)
    sides = {"exactly_once_outputs": ROOT, "flush_per_batch_outputs": other}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(runs):
        for side, root in sides.items():
            results[side].append(run(root, bookings, messages))
    out: dict = {"input_messages": messages}
    for side, rs in results.items():
        out[side] = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bookings", description=__doc__)
    parser.add_argument("--bookings", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--a", help="the other checkout (default: FLUSH_PER_BATCH via git archive)")
    args = parser.parse_args()
    other = Path(args.a).resolve() if args.a else checkout(FLUSH_PER_BATCH)
    result = compare(other, args.bookings, args.runs)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    print(f"booking job, {result['input_messages']:,} input records, 1 worker, start-up included")
    print("| outputs | events/s | job CPU s | peak MB |")
    print("|---|---:|---:|---:|")
    for side in ("exactly_once_outputs", "flush_per_batch_outputs"):
        r = result[side]
        print(f"| {side} | {r['events_per_s']:,.0f} | {r['cpu_seconds']:.1f} | {r['peak_mb']:.0f} |")
    if "waiting_keys" in result:
        w = result["waiting_keys"]
        print(f"{w['keys']:,} waiting keys, no input, -s {w['epoch_s']}: {w['cpu_share'] * 100:.0f} % of a core")


if __name__ == "__main__":
    sys.exit(main())
