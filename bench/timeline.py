"""A timeline of one bounded run of the movie-impressions job, from exec to exit.

    python -m bench.timeline                                   # the 1,000-event start-up topic (make up)
    python -m bench.timeline --topic bench-seed-1000000 --root /path/to/other/checkout

The job runs as `bench.job.run_job` runs it (bounded, a recovery store, exactly-once into
the local S3, a bucket of its own), in a child that first marks the product's start-up
and shut-down steps, then runs `bytewax.run` as `python -m bytewax.run` would. One line per
step, begun (`>`) and ended (`<`): milliseconds since the child was started, the child's
CPU milliseconds so far (all threads) and the thread. The product's modules are imported
where and when the job imports them (a mark is set as its module is imported).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.abc
import importlib.util
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

# (module, attribute path): the steps marked in the child.
STEPS = [
    ("dataflows.skeleton", "start"),
    ("connectors.transports.kafka", "KafkaTransport.check"),
    ("dataflows.impressions.outputs", "rows_sink"),
    ("connectors.sinks.s3_client", "S3Location.client"),
    ("dataflows.movie_impressions", "build_flow"),
    ("connectors.transports.kafka_source", "StatefulKafkaSource.build_part"),
    ("connectors.transports.kafka_partition", "StatefulKafkaPartition.snapshot"),
    ("connectors.transports.kafka_partition", "StatefulKafkaPartition.close"),
    ("connectors.sinks.s3_objects", "PartitionedS3Sink.build_part"),
    ("connectors.sinks.s3_objects", "_S3SinkPartition._resume"),
    ("connectors.sinks.s3_objects", "_S3SinkPartition.write_batch"),
    ("connectors.sinks.s3_objects", "_S3SinkPartition._write"),
    ("connectors.sinks.s3_objects", "_S3SinkPartition.snapshot"),
    ("connectors.sinks.s3_objects", "_S3SinkPartition.close"),
    ("connectors.transports.kafka_sink", "KafkaTxSink.build_part"),
    ("connectors.transports.kafka_sink", "_TxPartition.snapshot"),
    ("connectors.transports.kafka_sink", "_TxPartition.close"),
]


class Marks:
    def __init__(self, started: float, out: str) -> None:
        self.started = started
        self.out = open(out, "a", buffering=1)  # open until the process ends

    def __call__(self, what: str) -> None:
        now, cpu = (time.time() - self.started) * 1000, time.process_time() * 1000
        self.out.write(f"{now:8.1f} ms  cpu {cpu:6.0f}  [{threading.current_thread().name[:14]:14}] {what}\n")

    def wrap(self, module: ModuleType, path: str) -> None:
        owner: object = module
        *owners, name = path.split(".")
        for attribute in owners:
            owner = getattr(owner, attribute, None)
        original = getattr(owner, name, None)
        if original is None:  # not in this checkout
            return
        label = f"{module.__name__.rsplit('.', 1)[-1]}.{path}"

        def marked(*args: object, **kwargs: object) -> object:
            began = time.time()
            self(f"> {label}")
            try:
                return original(*args, **kwargs)
            finally:
                self(f"< {label} ({(time.time() - began) * 1000:.1f} ms)")

        setattr(owner, name, marked)

    def source_batches(self, module: ModuleType) -> None:
        """A partition's first records read (before the step), its first batch with items, its end, and its stop."""
        partition = module.StatefulKafkaPartition
        original = partition.next_batch
        seen: dict[str, str] = {}
        read: set[str] = set()

        def reader(name: str) -> None:
            read_batch = getattr(partition, name, None)
            if read_batch is None:  # not in this checkout
                return

            def marked(part: Any, *args: Any) -> Any:
                batch = read_batch(part, *args)
                if batch is not None and part._part_id not in read:
                    read.add(part._part_id)
                    self(f"source {part._part_id}: first records read")
                return batch

            setattr(partition, name, marked)

        reader("_read_native")
        reader("_read_messages")

        def next_batch(part: Any) -> list:
            try:
                items = original(part)
            except StopIteration:
                self(f"source {part._part_id}: stops")
                raise
            if items and part._part_id not in seen:
                seen[part._part_id] = "items"
                self(f"source {part._part_id}: first items")
            if part._internals.at_end and seen.get(part._part_id) != "end":
                seen[part._part_id] = "end"
                self(f"source {part._part_id}: at its end")
            return items

        partition.next_batch = next_batch


class MarkOnImport(importlib.abc.MetaPathFinder):
    """Sets a module's marks once it is imported, where and when the job imports it."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.pending = {module for module, _ in STEPS}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.pending:
            return None
        self.pending.discard(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, marks = spec.loader, self.marks
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            for step_module, path in STEPS:
                if step_module == name:
                    marks.wrap(module, path)
            if name == "connectors.transports.kafka_partition":
                marks.source_batches(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def child(argv: list[str]) -> None:
    marks = Marks(float(os.environ["TIMELINE_STARTED"]), os.environ["TIMELINE_OUT"])
    marks("interpreter up")
    sys.meta_path.insert(0, MarkOnImport(marks))
    atexit.register(marks, "exit handlers (the last one)")
    sys.argv = ["bytewax.run", *argv]
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
    marks("bytewax.run returned (no early exit)")


def timeline(topic: str, root: Path) -> str:
    from bench.job import FLOW, compiled, job_environment
    from bench.stack import BUCKET, S3
    from devstack.s3 import create_bucket

    compiled(root)
    prefix = f"timeline-{uuid.uuid4().hex[:8]}"
    bucket = f"{BUCKET}-{prefix}"
    create_bucket(S3, bucket)
    recovery = Path(tempfile.mkdtemp(prefix="bench-timeline-"))
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    out = recovery / "timeline.txt"
    env = {
        **job_environment(topic, bucket, prefix),
        "TIMELINE_OUT": str(out),
        "PYTHONPATH": str(root),
    }
    argv = [FLOW, "-w", "1", "-r", str(recovery), "-s", "5", "-b", "0"]
    started = time.time()
    env["TIMELINE_STARTED"] = repr(started)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *argv],  # the product from `root`
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ended = (time.time() - started) * 1000
    if done.returncode != 0:
        msg = f"the traced run failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return out.read_text() + f"{ended:8.1f} ms  process exited\n"


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--topic", default="bench-startup-1000")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the checkout to run")
    args = parser.parse_args()
    print(timeline(args.topic, Path(args.root).resolve()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
