"""Session services: a real Kafka broker and a real S3 server on free loopback ports."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.transports.kafka_control import NOT_READY
from dataflows.impressions.layout import OUTPUT_SCHEMA
from devstack import processes
from devstack.kafka import KafkaBroker, create_topics
from devstack.processes import child_setup, free_port
from devstack.s3 import LOCAL_CREDENTIALS, S3Server

ROOT = Path(__file__).resolve().parent.parent
# What the tests run, per job; the Kubernetes manifests must run the same (tests/deploy).
FLOWS = {
    "movie-impressions": "dataflows.movie_impressions:flow",
    "booking-correlation": "dataflows.booking_correlation:flow",
}


pytest_plugins = ["tests.runs", "tests.kinesis_fixtures", "tests.secured_fixtures"]

# No per-example deadline: the guarantee tests run beside a CPU hog too, and a slow example is not a wrong one.
hypothesis.settings.register_profile("waxstreams", deadline=None)
hypothesis.settings.load_profile("waxstreams")
processes.tie_children_to_parent = True  # nothing the suite starts outlives it


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(free_port(), free_port(), tmp_path_factory.mktemp("kafka"), ROOT / ".cache")
    broker.start()
    yield broker
    broker.stop(grace=0)  # its data is thrown away: no controlled shutdown to wait for


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(free_port(), tmp_path_factory.mktemp("s3") / "s3.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def local_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def make_topics(kafka: KafkaBroker, *names: str, partitions: int = 2) -> None:
    create_topics(kafka.setup_bootstrap, list(names), partitions)


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) in a topic, read from the beginning to the current end."""
    return [record for records in read_partitions(bootstrap, topic).values() for record in records]


def read_partitions(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Every (key, value) of every partition of a topic, in order, to its current end, as its
    readers must read the jobs' transactional outputs: `read_committed`, ending at the
    end-of-partition events (a partition's last offset may be a commit marker, which no
    consumer receives)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in partitions}
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                error = msg.error()
                if error is None:
                    out[msg.partition()].append((msg.key(), msg.value()))
                    at_end.discard(msg.partition())  # an end seen before later records came
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif error.code() not in NOT_READY:  # a fresh topic's partitions may still be placed
                    raise KafkaException(error)
        assert len(at_end) == len(partitions), f"could not read {topic} to its end"
        return out
    finally:
        consumer.close()


def read_s3_rows(server: S3Server, bucket: str, prefix: str, fmt: str = "parquet") -> pl.DataFrame:
    """Every data object under prefix (not the sink's manifests), with an `object` column."""
    client = server.client()
    frames = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            if "/_sink/" in key:
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            frame = (
                pl.read_parquet(io.BytesIO(body))
                if fmt == "parquet"
                else pl.read_csv(io.BytesIO(body), schema=OUTPUT_SCHEMA)  # as docs/querying.md advises
            )
            frames.append(frame.with_columns(object=pl.lit(key)))
    return pl.concat(frames) if frames else pl.DataFrame()


def run_dataflow(
    target: str,
    env: dict[str, str],
    *,
    workers: int = 1,
    recovery: Path | None = None,
    timeout: float = 300,
    backup_s: int = 0,
) -> subprocess.CompletedProcess:
    """Run a dataflow the way a user does: `python -m bytewax.run`, in its own process.

    `backup_s`: bytewax's -b, the seconds of snapshot history it keeps (epochs are 1 s here).
    """
    argv = [sys.executable, "-m", "bytewax.run", target, "-w", str(workers)]
    if recovery is not None:
        argv += ["-r", str(recovery), "-s", "1", "-b", str(backup_s)]
    else:
        env = {"ALLOW_NO_RECOVERY": "true", **env}  # the jobs refuse to run without a store unless told
    result = subprocess.run(
        argv,
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=child_setup(),
    )
    return result


def init_recovery(path: Path, partitions: int = 1, part: int | None = None) -> Path:
    """A store of `partitions`; with `part`, only that partition, as a pod's own volume holds it."""
    path.mkdir(parents=True, exist_ok=True)
    if part is None:
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)], check=True)
    else:
        init = ["init", str(path), "--partitions", str(partitions), "--part", str(part)]
        subprocess.run([sys.executable, "-m", "connectors.recovery_store", *init], cwd=ROOT, check=True)
    return path


def cluster_addresses(processes: int) -> str:
    """bytewax's -a: a free loopback port per process."""
    return ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))


def run_cluster(
    target: str, env: dict[str, str], *, processes: int, recovery: Path | list[Path], timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Run a dataflow as `processes` processes of 1 worker on loopback, the way pods run it:
    sharing one recovery directory, or each with its own (a list, in process order)."""
    recoveries = recovery if isinstance(recovery, list) else [recovery] * processes
    env = {"RECOVERY_RENDEZVOUS_PORT": str(free_port()), **env}  # its own: clusters of parallel tests must not meet
    argv = [sys.executable, "-m", "bytewax.run", target, "-s", "1", "-b", "0", "-a", cluster_addresses(processes)]
    procs = [
        subprocess.Popen(
            [*argv, "-r", str(recoveries[i]), "-i", str(i)],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=child_setup(),
        )
        for i in range(processes)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.communicate()  # reaped, pipes closed: nothing leaks into the next test as a warning
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


pytest.register_assert_rewrite("tests.runs")
from tests.runs import new_run, pod_cluster  # noqa: E402  (fixtures shared by tests/guarantees and tests/deploy)

__all__ = ["new_run", "pod_cluster"]
