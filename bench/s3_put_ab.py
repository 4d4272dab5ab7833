"""A/B of the sink's data PUTs: `s3_client.NativePut` (obstore, Rust object_store: signed and
sent with the GIL released) against the hand-signed `DirectPut` it replaced (SigV4 in Python,
urllib3; taken from git history) and the boto3 client (S3_DIRECT_PUT=false).

    python -m bench.s3_put_ab                    # 1,000 PUTs per side and mode, 3 alternating runs
    python -m bench.s3_put_ab --objects 2000 --runs 5

Starts moto's server (devstack/s3.py) on a free loopback port and stops it at the end. The
workload is the sink's: conditional creates (`If-None-Match: *`, fresh keys) of objects of
2-50 KB (log-uniform, as the job's Parquet parts) with a ~1 KB JSON manifest every 8th,
sent one after another (`seq`) and from 8 threads (`pool`, the sink's upload pool). Each
(run, side, mode) writes under its own prefix; sides alternate within a run so what else
the machine does spreads over both. Reported, medians of the runs: objects/s (wall, bound
by moto, which runs in its own process) and CPU-seconds per 1,000 PUTs of this process
(every thread, obstore's runtime included) and of the calling threads alone (what can
hold the GIL against the job: for native, mostly Rust without it), and with a pure-Python
thread alongside (`pool+py`), how much of its speed alone it keeps (on an idle machine
only: its baseline is half a second). The GIL time itself: `py-spy record --gil -r 200 -f raw`
of a run with one `--side`, the samples with `one` in their stack over the PUTs. Also
checks that each side's create refuses a taken key.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.stack import process_cpu
from devstack.processes import free_port
from devstack.s3 import LOCAL_CREDENTIALS, S3Server

BUCKET = "put-ab"
POOL = 8  # the sink's upload threads per partition (s3_objects._S3SinkPartition._uploads)

Put = Callable[[str, bytes], None]  # a conditional create; raises if the key is taken


def workload(n: int, seed: int = 7) -> list[bytes]:
    """n bodies: Parquet-sized objects, every 8th a small JSON manifest."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        if i % 8 == 7:
            keys = [
                f"impressions/2019-01-07--07/m{rng.randrange(10**6)}/p00-{i:010d}-abcd1234.parquet" for _ in range(8)
            ]
            bodies.append(json.dumps({"seq": i, "objects": keys, "units": [[k, [[1, 2]]] for k in keys]}).encode())
        else:
            bodies.append(rng.randbytes(int(2048 * 25 ** rng.random())))  # 2-50 KB, log-uniform
    return bodies


# The last commit with the hand-signed PUT (connectors/sinks/s3_put.py).
DIRECT_PUT_COMMIT = "b5b9848b43bfa415c07d7735655d79d1de6feef6"


def direct_put(endpoint: str) -> Put:
    from connectors.sinks.s3_client import S3Location

    source = subprocess.run(
        ["git", "show", f"{DIRECT_PUT_COMMIT}:connectors/sinks/s3_put.py"], capture_output=True, check=True, text=True
    ).stdout
    module = types.ModuleType("s3_put")
    exec(compile(source, "s3_put.py", "exec"), module.__dict__)  # this repository's own code, from history
    put = module.DirectPut(S3Location(BUCKET, "", endpoint, "us-east-1").client(), path_style=True)
    return lambda key, body: put.put_object(Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")


def boto3_put(endpoint: str) -> Put:
    from connectors.sinks.s3_client import S3Location

    client = S3Location(BUCKET, "", endpoint, "us-east-1").client()
    return lambda key, body: client.put_object(Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")


def native_put(endpoint: str) -> Put:
    from connectors.sinks.s3_client import NativePut, S3Location

    put = NativePut(S3Location(BUCKET, "", endpoint, "us-east-1").client(), path_style=True)
    return lambda key, body: put.put_object(Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")


# (name, threads, a pure-Python thread alongside: the job's main thread, as far as the GIL goes)
MODES = (("seq", 1, False), ("pool", POOL, False), ("pool+py", POOL, True))

SIDES: dict[str, Callable[[str], Put]] = {"native": native_put, "direct": direct_put, "boto3": boto3_put}


def spin(stop: threading.Event) -> float:
    """A pure-Python loop, as the job's main thread: iterations per wall second until `stop`."""
    n, t0 = 0, time.perf_counter()
    while not stop.is_set():
        n += 1
    return n / (time.perf_counter() - t0)


def timed(put: Put, prefix: str, bodies: list[bytes], threads: int, server: int, python: bool) -> dict[str, float]:
    """Objects/s and CPU seconds per 1,000 PUTs of `bodies` under `prefix`; with `python`, and
    a pure-Python thread alongside, how much of its speed alone that thread keeps."""
    caller_cpu: list[float] = []
    stop = threading.Event()
    spinner = ThreadPoolExecutor(1)
    if python:
        alone = spinner.submit(spin, stop)
        time.sleep(0.5)  # a fixed span of the spinner alone, not a wait for a condition
        stop.set()
        alone_rate, stop = alone.result(), threading.Event()
        spinning = spinner.submit(spin, stop)

    def one(i: int) -> None:
        t0 = time.thread_time()
        put(f"{prefix}/{i:06d}", bodies[i])
        caller_cpu.append(time.thread_time() - t0)

    wall0, cpu0, server0 = time.perf_counter(), time.process_time(), process_cpu(server)
    if threads == 1:
        for i in range(len(bodies)):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(bodies))))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server_s = process_cpu(server) - server0
    stop.set()
    spinner.shutdown()
    per_k = 1000 / len(bodies)
    result = {
        "objects_s": len(bodies) / wall,
        "cpu_s_per_1k": cpu * per_k,
        "caller_cpu_s_per_1k": sum(caller_cpu) * per_k,
        "server_cpu_s_per_1k": server_s * per_k,
    }
    if python:
        result["python_kept"] = spinning.result() / alone_rate
    return result


def refuses_taken_key(put: Put, prefix: str) -> str:
    put(f"{prefix}/taken", b"first")
    try:
        put(f"{prefix}/taken", b"second")
    except Exception as exc:
        return f"refused: {type(exc).__module__}.{type(exc).__name__}"
    return "NOT REFUSED"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_put_ab", description=__doc__)
    parser.add_argument("--objects", type=int, default=1000, help="PUTs per (run, side, mode)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--side", action="append", choices=sorted(SIDES), help="default: all that import")
    args = parser.parse_args()
    os.environ.update(LOCAL_CREDENTIALS)
    bodies = workload(args.objects)
    print(f"{len(bodies)} PUTs per run, {sum(map(len, bodies)) / len(bodies) / 1024:.1f} KB on average")
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(free_port(), Path(tmp) / "moto.log")
        server.start()
        try:
            server.create_bucket(BUCKET)
            puts: dict[str, Put] = {}
            for name in args.side or list(SIDES):
                try:
                    puts[name] = SIDES[name](server.endpoint_url)
                except (ImportError, subprocess.CalledProcessError) as exc:
                    print(f"{name}: not measured ({exc})")
            pid = server._process.pid if server._process else 0
            for name, put in puts.items():
                print(f"{name}: {refuses_taken_key(put, f'check-{name}')}")
                timed(put, f"warm-{name}", bodies[: POOL * 4], POOL, pid, False)  # connections, credentials
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for run in range(args.runs):
                for mode, threads, python in MODES:
                    order = list(puts) if run % 2 == 0 else list(reversed(puts))
                    for name in order:
                        result = timed(puts[name], f"r{run}-{mode}-{name}", bodies, threads, pid, python)
                        results.setdefault((mode, name), []).append(result)
                        print(f"  run {run} {mode:8} {name:8} " + "  ".join(f"{k} {v:.2f}" for k, v in result.items()))
        finally:
            server.stop()
    print(f"\nmedians of {args.runs} runs; CPU in seconds per 1,000 PUTs")
    print(f"{'mode':8} {'side':8} {'objects/s':>9} {'CPU':>6} {'callers':>8} {'moto':>6} {'py kept':>8}")
    for (mode, name), rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        if "python_kept" in med:  # the spinner's CPU is in the process's: only throughput and its share
            print(f"{mode:8} {name:8} {med['objects_s']:9.0f} {'':6} {'':8} {'':6} {med['python_kept']:8.0%}")
            continue
        print(
            f"{mode:8} {name:8} {med['objects_s']:9.0f} {med['cpu_s_per_1k']:6.2f} "
            f"{med['caller_cpu_s_per_1k']:8.2f} {med['server_cpu_s_per_1k']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
