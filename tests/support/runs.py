"""A movie-impressions job's world for the guarantee and deploy tests: topics, bucket, recovery, oracle."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from polars.testing import assert_frame_equal

from connectors.recovery_store.partition_files import read_progress
from connectors.recovery_store.resume_epoch import resume_epoch_of
from devstack.autoscale import LocalCluster
from devstack.processes import free_port
from producers.bookings import GeneratedBooking
from producers.movie_impressions import GeneratedEvent, TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.jobs import FLOWS, Job, cluster_addresses, failed_processes, init_recovery, run_cluster, run_dataflow
from tests.support.oracles import expected_bookings, expected_rows, raw_of

BOUND_S = 2  # MAX_OUT_OF_ORDERNESS_SECONDS of these runs; every outage lasts longer
FLOW = FLOWS["movie-impressions"]


class ImpressionsRun:
    """One job's topics, bucket and recovery store, plus what was produced into them."""

    def __init__(
        self,
        kafka,
        s3,
        tmp_path: Path,
        s3_endpoint: str | None = None,
        partitions: int = 3,
        output_format: str = "parquet",
    ) -> None:
        run_id = uuid.uuid4().hex[:8]
        self.kafka, self.s3, self.tmp_path = kafka, s3, tmp_path
        self.bucket, self.prefix = f"g-{run_id}", "impressions"
        topics = {
            "IMPRESSIONS_TOPIC": f"in-{run_id}",
            "DEAD_LETTER_TOPIC": f"dead-{run_id}",
            "LATE_TOPIC": f"late-{run_id}",
        }
        make_topics(kafka, *topics.values(), partitions=partitions)
        s3.create_bucket(self.bucket)
        self.env = {
            **topics,
            "KAFKA_BROKERS": kafka.bootstrap,
            "S3_ENDPOINT_URL": s3_endpoint or s3.endpoint_url,
            "S3_BUCKET": self.bucket,
            "S3_PREFIX": self.prefix,
            "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S),
            "KAFKA_BATCH_SIZE": "300",
            "BOUNDED": "false",
            "CONSUMER_GROUP": f"group-{run_id}",
            "OUTPUT_FORMAT": output_format,
        }
        self.recovery = init_recovery(tmp_path / "recovery")
        self.produced: list[GeneratedEvent] = []
        self.jobs: list[Job] = []

    def produce(self, events: list[GeneratedEvent], rate: float = 0.0) -> None:
        produce(iter(events), self.kafka.bootstrap, self.env["IMPRESSIONS_TOPIC"], rate)
        self.produced += events

    def start(self, workers: int = 1, **overrides: str) -> Job:
        log = self.tmp_path / f"run-{len(self.jobs) + 1}.log"
        self.jobs.append(Job(FLOW, {**self.env, **overrides}, log, workers=workers, recovery=self.recovery))
        return self.jobs[-1]

    def stop_all(self) -> None:
        for job in self.jobs:
            job.kill()

    def finish(self, workers: int = 1, backup_s: int = 0) -> None:
        """A last, bounded run from the recovery store up to the end of the topic (`backup_s`: bytewax's -b)."""
        result = run_dataflow(
            FLOW, {**self.env, "BOUNDED": "true"}, workers=workers, recovery=self.recovery, backup_s=backup_s
        )
        assert result.returncode == 0, result.stderr[-3000:]

    def data_objects(self) -> set[str]:
        client = self.s3.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return {o["Key"] for p in pages for o in p.get("Contents", []) if "/_sink/" not in o["Key"]}

    def manifest_objects(self) -> set[str]:
        client = self.s3.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/_sink/")
        keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
        return {
            k for m in keys for k in json.loads(client.get_object(Bucket=self.bucket, Key=m)["Body"].read())["objects"]
        }

    def assert_exact(self) -> None:
        rows = read_s3_rows(self.s3, self.bucket, self.prefix)
        doubled = rows.filter(pl.len().over("movieId", "userId", "windowStart") > 1)
        assert doubled.is_empty(), f"rows written more than once:\n{describe_doubles(doubled)}\nlogs: {self.tmp_path}"
        assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(self.produced))
        assert self.data_objects() == self.manifest_objects(), "stray objects, or a manifest pointing at nothing"

    def consumer_lag(self) -> int:
        """Records in the input topic past the offsets the job last committed (at a snapshot)."""
        ends, committed = self.consumer_offsets()
        return ends - committed

    def consumer_offsets(self) -> tuple[int, int]:
        """(end offsets, offsets the job committed at its last snapshot), summed over the input's partitions."""
        topic = self.env["IMPRESSIONS_TOPIC"]
        consumer = Consumer({"bootstrap.servers": self.kafka.bootstrap, "group.id": self.env["CONSUMER_GROUP"]})
        try:
            partitions = [
                TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ]
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
            for _ in range(50):  # a fresh broker's group coordinator may still be loading
                try:
                    committed = consumer.committed(partitions, timeout=10)
                    break
                except KafkaException:
                    time.sleep(0.2)
            else:
                msg = "the group coordinator never answered"
                raise AssertionError(msg)
            return sum(ends), sum(max(tp.offset, 0) for tp in committed)
        finally:
            consumer.close()

    def snapshot_epochs(self) -> list[int]:
        return snapshot_epochs(self.recovery)

    def newest_snapshot_epoch(self) -> int:
        return newest_snapshot_epoch(self.recovery)


class PodCluster:
    """A job as `processes` processes on loopback, each with its own recovery directory
    holding only its partition of the store: one volume per pod, as k8s/ deploys it."""

    def __init__(self, target: str, env: dict[str, str], tmp_path: Path, processes: int = 2) -> None:
        self.target, self.tmp_path = target, tmp_path
        self.env = {**env, "RECOVERY_RENDEZVOUS_PORT": str(free_port())}
        self.dirs = [init_recovery(tmp_path / f"pod-{i}", processes, part=i) for i in range(processes)]
        self.jobs: list[Job] = []
        self.starts = 0
        self.addresses = ""

    def start(self) -> list[Job]:
        self.starts += 1
        self.addresses = cluster_addresses(len(self.dirs))
        self.jobs = []
        for i in range(len(self.dirs)):
            self.start_process(i)
        return self.jobs

    def start_process(self, i: int, attempt: str = "", **overrides: str) -> Job:
        """Process `i` of the current start (again, after it stopped: `attempt` names its log)."""
        log = self.tmp_path / f"start-{self.starts}-process-{i}{attempt}.log"
        job = Job(self.target, {**self.env, **overrides}, log, recovery=self.dirs[i], cluster=(self.addresses, i))
        self.jobs.append(job)
        return job

    def kill(self) -> None:
        """SIGKILL every process, back to back: a node lost, or every pod evicted at once."""
        for job in self.jobs:
            job.kill()

    def newest_snapshot_epoch(self) -> int:
        return max(newest_snapshot_epoch(d) for d in self.dirs)

    def abandoned_snapshots(self) -> int:
        """Snapshots stored at or past the epoch a resume would start from (bytewax's resume
        calculation over every directory): what a crash between an epoch's snapshots and its
        frontier leaves, and what the next start must drop."""
        progress = [part for d in self.dirs for part in read_progress(d)]
        epoch = resume_epoch_of(progress)
        return sum(e >= epoch for d in self.dirs for e in snapshot_epochs(d))

    def kill_between_snapshot_and_frontier(self, timeout: float) -> None:
        """SIGKILL every process at an instant the store holds abandoned snapshots: the processes
        are frozen (SIGSTOP) once that is seen, killed if it still holds, else let go on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.abandoned_snapshots():
                for job in self.jobs:
                    job.pause()
                if self.abandoned_snapshots():
                    self.kill()
                    return
                for job in self.jobs:
                    job.resume()
            for job in self.jobs:
                assert job.process.poll() is None, job.output()[-3000:]
            time.sleep(0.005)
        msg = f"no instant between an epoch's snapshots and its frontier within {timeout} s"
        raise AssertionError(msg)

    def every_directory_has_a_snapshot_past(self, epoch: int) -> bool:
        return all(newest_snapshot_epoch(d) > epoch for d in self.dirs)

    def finish(self) -> None:
        """A last, bounded run of the whole cluster up to the end of the input."""
        env = {**self.env, "BOUNDED": "true"}
        results = run_cluster(self.target, env, processes=len(self.dirs), recovery=self.dirs)
        self.starts += 1
        for i, result in enumerate(results):
            (self.tmp_path / f"start-{self.starts}-process-{i}.log").write_text(result.stderr)
        assert not failed_processes(results), failed_processes(results)

    def dropped_snapshots(self) -> int:
        """Snapshots the last start's repair dropped, over all its processes (from their logs)."""
        logs = [p.read_text(errors="replace") for p in self.tmp_path.glob(f"start-{self.starts}-process-*.log")]
        return sum(int(n) for text in logs for n in re.findall(r"dropped (\d+) snapshots of epochs", text))


@pytest.fixture
def pod_cluster(tmp_path: Path):
    """Makes PodClusters; whatever they started is killed when the test ends, pass or fail."""
    clusters: list[PodCluster] = []

    def make(target: str, env: dict[str, str]) -> PodCluster:
        clusters.append(PodCluster(target, env, tmp_path))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.kill()


def open_live_store(part: Path) -> sqlite3.Connection:
    """A read-only connection to a partition a running job writes. Safe from the test's process:
    SQLite's locks coordinate it with the job's connection (no sqlite3 in the job's own process
    may open a live partition: connectors/backup.py, Backups)."""
    return sqlite3.connect(f"{part.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def snapshot_epochs(recovery: Path) -> list[int]:
    """The epoch of every snapshot in a recovery store, read with plain sqlite."""
    epochs = []
    for part in recovery.glob("*.sqlite3"):
        epochs += _read_live(part, "SELECT snap_epoch FROM snaps")
    return epochs


def _read_live(part: Path, query: str) -> list:
    """A query on a store a job is writing."""
    with closing(open_live_store(part)) as db:
        return [row[0] for row in db.execute(query)]


def newest_snapshot_epoch(recovery: Path) -> int:
    """Grows when bytewax stores an epoch's snapshots (files' mtimes also move for other reasons)."""
    return max(snapshot_epochs(recovery), default=0)


def impressions_env(kafka, s3, name: str = "imp", input_partitions: int = 2) -> dict[str, str]:
    """Fresh topics and bucket for one bounded impressions run, and the environment naming them."""
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, f"{run_id}-in", partitions=input_partitions)
    make_topics(kafka, f"{run_id}-dead", f"{run_id}-late")
    s3.create_bucket(run_id)
    return {
        "KAFKA_BROKERS": kafka.bootstrap,
        "IMPRESSIONS_TOPIC": f"{run_id}-in",
        "DEAD_LETTER_TOPIC": f"{run_id}-dead",
        "LATE_TOPIC": f"{run_id}-late",
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": run_id,
        "BOUNDED": "true",
    }


def describe_doubles(doubled: pl.DataFrame) -> str:
    """Which objects hold the repeated keys, and how many of them: tells a re-fired window from a re-done write."""
    return str(
        doubled.group_by("object")
        .agg(rows=pl.len(), windows=pl.col("windowStart").unique().sort())
        .sort("object")
        .with_columns(pl.col("windows").cast(pl.List(pl.String)).list.join(","))
    )


class SecondObjectOfAWrite:
    """Matches the PUT of a data object whose sink write (partition, seq) already put one."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, method: str, path: str) -> bool:
        match = re.search(r"/(p\d+-\d{10})-[0-9a-f]+\.parquet$", path)
        if method != "PUT" or match is None:
            return False
        if match.group(1) in self.seen:
            return True
        self.seen.add(match.group(1))
        return False


def check_booking_outputs(
    kafka, env: dict[str, str], messages: list[GeneratedBooking], *, allow_identical_repeats: bool
) -> None:
    check_booking_records(
        read_topic(kafka.bootstrap, env["ALERTS_TOPIC"]),
        read_topic(kafka.bootstrap, env["UNMATCHED_TOPIC"]),
        read_topic(kafka.bootstrap, env["DEAD_LETTER_TOPIC"]),
        messages,
        allow_identical_repeats=allow_identical_repeats,
    )


def check_booking_records(
    alerts: list,
    unmatched: list,
    dead_letters: list,
    messages: list[GeneratedBooking],
    *,
    allow_identical_repeats: bool,
) -> None:
    """The job's (key, value) outputs against the oracle over what was sent."""
    want_alerts, want_unmatched, want_invalid = expected_bookings(messages)
    by_id: dict[str, set[bytes]] = {}
    for key, value in alerts:
        by_id.setdefault(key if isinstance(key, str) else key.decode(), set()).add(value)
    assert all(len(values) == 1 for values in by_id.values()), "an alert differs from its repeat"
    if not allow_identical_repeats:
        assert len(alerts) == len(by_id)
    assert {k: json.loads(next(iter(v))) for k, v in by_id.items()} == want_alerts

    seen = {(k if isinstance(k, str) else k.decode()): json.loads(v)["seen"] for k, v in unmatched}
    assert seen == want_unmatched
    if not allow_identical_repeats:
        assert len(unmatched) == len(seen), "an unmatched record repeated"

    dead = [json.loads(v) for _, v in dead_letters]
    assert all(d["kind"] == "invalid" for d in dead), "bad input made our own code fail"
    if allow_identical_repeats:
        assert set(map(raw_of, dead)) == set(want_invalid), "dead letters differ"
    else:
        assert Counter(map(raw_of, dead)) == want_invalid


@pytest.fixture
def new_run(kafka, s3, tmp_path: Path):
    """Makes ImpressionsRuns; whatever they started is killed when the test ends, pass or fail."""
    runs: list[ImpressionsRun] = []

    def make(s3_endpoint: str | None = None, broker=None, output_format: str = "parquet") -> ImpressionsRun:
        runs.append(ImpressionsRun(broker or kafka, s3, tmp_path, s3_endpoint, output_format=output_format))
        return runs[-1]

    yield make
    for run in runs:
        run.stop_all()


def traffic(count: int, seed: int) -> list[GeneratedEvent]:
    # 2+ hours of event time, disorder (1.5 s) inside the 2 s bound, invalid and late events.
    return list(
        generate(
            TrafficShape(
                count=count,
                movies=10,
                users=40,
                step_ms=7_500_000 // count,
                jitter_ms=1_500,
                invalid_fraction=0.02,
                late_fraction=0.005,
                seed=seed,
            )
        )
    )


@pytest.fixture
def local_cluster(tmp_path: Path):
    """Makes LocalClusters; whatever they started is killed when the test ends, pass or fail."""
    clusters: list[LocalCluster] = []

    def make(target: str, env: dict[str, str], minimum: int, maximum: int) -> LocalCluster:
        clusters.append(LocalCluster(target, env, tmp_path / f"cluster-{len(clusters)}", minimum, maximum))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.kill()
