"""`make chaos`: random sequences of crashes, stalls and outages for both jobs and every output kind.

Each sequence is a fresh world (topics or streams, bucket, recovery store) and a random plan:
1-4 attempts, each killed (SIGKILL) at a random instant — often within a second of its start,
before or around its first snapshot, so crashes come back to back — or frozen (SIGSTOP) for a
while first, with the output's server frozen (an outage) now and then; traffic flows throughout;
then a bounded run to the end of the input. A reader polls every output the whole time and
must never see a record twice, nor see one vanish; at the end every output must equal the
oracle over what was produced. Runs for CHAOS_MINUTES (default 20) in all, the output kinds
sharing the time, and appends one JSON line per sequence to CHAOS_RESULTS; `tests/chaos/conftest.py`
prints the table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from connectors.recovery_store.partition_files import read_progress
from connectors.recovery_store.resume_epoch import resume_epoch_of
from connectors.transports import kafka_native
from devstack.processes import free_port
from producers.bookings import BookingTraffic, GeneratedBooking, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.support.data import make_topics, read_topic
from tests.support.jobs import FLOWS, Job, cluster_addresses, failed_processes, init_recovery, run_cluster
from tests.support.oracles import expected_bookings, expected_rows, raw_of
from tests.support.readers import COLUMNS, KEY
from tests.support.runs import BOUND_S, ImpressionsRun, snapshot_epochs, traffic

KINDS = ("objects", "delta", "kafka", "kinesis")
MINUTES = float(os.environ.get("CHAOS_MINUTES", "20"))
RESULTS = Path(os.environ.get("CHAOS_RESULTS", ".cache/chaos.jsonl"))
FAILED_LOGS = Path(".cache/chaos-failures")
LAYOUTS = ("1 worker", "2 workers", "2 processes")
# The Kafka reader of a sequence's job (KAFKA_READER): the native one too, when it is built.
READERS = ("confluent", "native") if kafka_native.unavailable() is None else ("confluent",)


def share_s() -> float:
    """Each kind's wall-clock share; with pytest-xdist the kinds run two at a time."""
    parallel = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return MINUTES * 60 * parallel / len(KINDS)


class Processes:
    """One attempt of a job: one process (1 or 2 workers) or two processes, each with its own store."""

    def __init__(self, target: str, env: dict[str, str], tmp: Path, layout: str, stores: list[Path]) -> None:
        self.jobs: list[Job] = []
        self.stores = stores
        n = len(stores)
        addresses = cluster_addresses(n) if n > 1 else None
        if n > 1:  # its own rendezvous: two clusters of the run must not answer each other on 9998
            env = {**env, "RECOVERY_RENDEZVOUS_PORT": str(free_port())}
        for i, store in enumerate(stores):
            log = tmp / f"attempt-{uuid.uuid4().hex[:6]}-{i}.log"
            cluster = (addresses, i) if addresses else None
            workers = 2 if layout == "2 workers" else 1
            self.jobs.append(Job(target, env, log, workers=workers, recovery=store, cluster=cluster))

    def signal(self, sig: int) -> None:
        for job in self.jobs:
            try:
                os.killpg(job.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        for job in self.jobs:
            job.kill()

    def abandoned_snapshots(self) -> int:
        """Snapshots at or past the epoch a resume would start from: an epoch's snapshots are
        written but its frontier is not yet."""
        epoch = resume_epoch_of([part for d in self.stores for part in read_progress(d)])
        return sum(e >= epoch for d in self.stores for e in snapshot_epochs(d))

    def kill_between_snapshot_and_frontier(self, timeout: float) -> bool:
        """Freeze and kill at an instant the store holds an epoch's snapshots but not its
        frontier; False (nothing done) if no such instant came within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.abandoned_snapshots():
                self.signal(signal.SIGSTOP)
                if self.abandoned_snapshots():
                    self.kill()
                    return True
                self.signal(signal.SIGCONT)
            time.sleep(0.005)
        return False

    def output(self) -> str:
        return "".join(job.output()[-4000:] for job in self.jobs)


class Plan:
    """A sequence's random faults, drawn from one seed so a failure can be replayed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.attempts = self.rng.randint(1, 3)
        self.layout = self.rng.choice(LAYOUTS)
        self.reader = self.rng.choice(READERS)

    def attempt(self) -> list[tuple[str, float]]:
        """(action, seconds to wait before it), ending in a kill."""
        steps: list[tuple[str, float]] = []
        if self.rng.random() < 0.2:
            steps.append(("stall", self.rng.uniform(0.5, 3)))
        if self.rng.random() < 0.2:
            steps.append(("outage", self.rng.uniform(0.5, 3)))
        # A third of kills land within a second of the start: back to back with the previous crash.
        wait = self.rng.uniform(0.1, 1.0) if self.rng.random() < 0.33 else self.rng.uniform(1.0, 6.0)
        kill = "kill at frontier" if self.rng.random() < 0.2 else "kill"
        steps.append((kill, wait))
        return steps


class Stats:
    def __init__(self, output: str) -> None:
        self.row = {"output": output, "sequences": 0, "native reader": 0, "crashes": 0, "frontier kills": 0}
        self.row |= {"stalls": 0, "outages": 0}
        self.row |= {"records": 0, "lost": 0, "doubled": 0, "failures": 0}

    def write(self, **fields: Any) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({**self.row, **fields}) + "\n")


class UnitReader(threading.Thread):
    """Polls an output with `read() -> {unit: value}` and remembers what it saw: a unit seen twice
    in one read, or gone, or changed, is a problem."""

    def __init__(self, read: Callable[[], list[tuple[Any, Any]]]) -> None:
        super().__init__(daemon=True)
        self.read, self.stop = read, threading.Event()
        self.seen: dict[Any, Any] = {}
        self.reads = 0
        self.doubled = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pairs = self.read()
            except Exception as exc:  # a frozen server, a table not made yet: as a reader would, try again
                if "NotFound" not in type(exc).__name__:
                    time.sleep(0.2)
                continue
            self.check(pairs)
            time.sleep(0.05)

    def check(self, pairs: list[tuple[Any, Any]]) -> None:
        self.reads += 1
        counts = Counter(unit for unit, _ in pairs)
        doubled = [u for u, n in counts.items() if n > 1]
        if doubled:
            self.doubled = max(self.doubled, len(doubled))
            self.problems.append(f"read {self.reads}: {len(doubled)} units twice, e.g. {doubled[0]}")
        now = dict(pairs)
        gone = [u for u in self.seen if u not in now]
        if gone:
            self.problems.append(f"read {self.reads}: {len(gone)} units gone, e.g. {gone[0]}")
        changed = [u for u, v in now.items() if self.seen.get(u, v) != v]
        if changed:
            self.problems.append(f"read {self.reads}: {len(changed)} units changed, e.g. {changed[0]}")
        for unit, value in now.items():
            self.seen.setdefault(unit, value)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)
        self.check(self.read())  # one last read, after everything landed


def freeze(pid: int | None, seconds: float) -> None:
    """SIGSTOP a server for `seconds`: its clients see an outage (connections hang, then time out)."""
    if pid is None:
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def run_sequence(
    plan: Plan,
    stats: Stats,
    start: Callable[[], Processes],
    feed: Callable[[int], None],
    server_pid: int | None,
    finish: Callable[[], None],
) -> None:
    """The plan's attempts, each started from the store and ended by a fault, traffic fed between; then the end."""
    for attempt in range(plan.attempts):
        processes = start()
        try:
            feeder = threading.Thread(target=feed, args=(attempt,))
            feeder.start()
            for action, wait in plan.attempt():
                time.sleep(wait)  # the fault's random instant: what is being tested, not a condition
                if action == "stall":
                    processes.signal(signal.SIGSTOP)
                    time.sleep(plan.rng.uniform(0.5, 2))
                    processes.signal(signal.SIGCONT)
                    stats.row["stalls"] += 1
                elif action == "outage":
                    freeze(server_pid, plan.rng.uniform(1, 4))
                    stats.row["outages"] += 1
                elif action == "kill at frontier" and processes.kill_between_snapshot_and_frontier(10):
                    stats.row["frontier kills"] += 1
            processes.kill()
            stats.row["crashes"] += 1
            feeder.join()
        finally:
            processes.kill()
        if plan.rng.random() < 0.25:
            time.sleep(BOUND_S + 1)  # down past the lateness bound now and then
    finish()


def stores(tmp: Path, layout: str) -> list[Path]:
    if layout == "2 processes":
        return [init_recovery(tmp / f"pod-{i}", 2, part=i) for i in range(2)]
    return [init_recovery(tmp / "store")]


def bounded_finish(target: str, env: dict[str, str], layout: str, store_dirs: list[Path]) -> None:
    env = {**env, "BOUNDED": "true"}
    if layout == "2 processes":
        results = run_cluster(target, env, processes=2, recovery=store_dirs)
    else:
        workers = 2 if layout == "2 workers" else 1
        done = Job(target, env, store_dirs[0].parent / "finish.log", workers=workers, recovery=store_dirs[0])
        code = done.wait(300)
        assert code == 0, done.output()[-3000:]
        return
    assert not failed_processes(results), failed_processes(results)


def until_time_is_up(
    kind: str, tmp_path: Path, one: Callable[[Plan, Stats, Path], None], server_log: Path | None = None
) -> None:
    """Sequences until the kind's share of time is up; a failed one's logs (and `server_log`, the
    broker's, whose coordinator lines explain a refused producer) are kept in FAILED_LOGS."""
    stats = Stats(kind)
    deadline = time.monotonic() + share_s()
    seed = int(os.environ.get("CHAOS_SEED", str(random.randrange(1 << 30))))
    failures: list[str] = []
    while time.monotonic() < deadline:
        plan = Plan(seed + stats.row["sequences"])
        tmp = tmp_path / f"seq-{stats.row['sequences']}"
        tmp.mkdir()
        try:
            one(plan, stats, tmp)
        except Exception as exc:  # a hung or failed run too: recorded, its logs kept, and the next sequence goes on
            kept = FAILED_LOGS / f"{kind}-seed-{seed + stats.row['sequences']}"
            shutil.copytree(tmp, kept, ignore=shutil.ignore_patterns("*.sqlite3"), dirs_exist_ok=True)
            if server_log is not None and server_log.exists():
                shutil.copy(server_log, kept / server_log.name)
            stats.row["failures"] += 1
            failures.append(f"seed {seed + stats.row['sequences']} ({plan.layout}, logs in {kept}): {str(exc)[:2000]}")
        stats.row["sequences"] += 1
    stats.write(seed=seed, seconds=round(share_s()))
    assert not failures, "\n\n".join(failures[:5])


# Impressions into objects or Delta ------------------------------------------------------


def impressions_sequence(kafka, s3, output_format: str) -> Callable[[Plan, Stats, Path], None]:
    def one(plan: Plan, stats: Stats, tmp: Path) -> None:
        run = ImpressionsRun(kafka, s3, tmp, output_format=output_format)
        run.env["KAFKA_BATCH_SIZE"] = "200"
        run.env["KAFKA_READER"] = plan.reader
        stats.row["native reader"] += plan.reader == "native"
        events = traffic(1_500 * (plan.attempts + 1), seed=plan.rng.randrange(1 << 30))
        chunks = [events[i * 1_500 : (i + 1) * 1_500] for i in range(plan.attempts + 1)]
        run.produce(chunks[0])
        dirs = stores(tmp, plan.layout)
        read = rows_reader(run, output_format)
        reader = UnitReader(read)
        reader.start()
        try:
            run_sequence(
                plan,
                stats,
                lambda: Processes(FLOWS["movie-impressions"], run.env, tmp, plan.layout, dirs),
                lambda attempt: run.produce(chunks[attempt + 1], rate=1500.0),
                s3._process.pid if s3._process else None,
                lambda: bounded_finish(FLOWS["movie-impressions"], run.env, plan.layout, dirs),
            )
        finally:
            reader.finish()
        want = {row[:2] + row[4:5]: row for row in expected_rows(run.produced).rows()}
        got = reader.seen
        stats.row["records"] += len(want)
        lost = [k for k in want if k not in got]
        stats.row["lost"] += len(lost)
        stats.row["doubled"] += reader.doubled
        assert not reader.problems, reader.problems[:3]
        assert not lost and got == want, f"{len(lost)} rows lost, {len(set(got) - set(want))} unexpected"
        check_dead_letters_once(run)

    return one


def rows_reader(run: ImpressionsRun, output_format: str) -> Callable[[], list[tuple[Any, Any]]]:
    if output_format == "delta":
        from deltalake import DeltaTable

        from connectors.sinks.delta_table import DeltaLocation

        location = DeltaLocation(f"s3://{run.bucket}/{run.prefix}", run.s3.endpoint_url, "us-east-1")

        def read_delta() -> list[tuple[Any, Any]]:
            table = DeltaTable(location.uri, storage_options=location.storage_options())
            return keyed_rows(pl.read_delta(table))

        return read_delta
    from tests.guarantees.test_object_readers import object_reader

    polling = object_reader(run)

    def read_objects() -> list[tuple[Any, Any]]:
        result = polling.read()
        return [] if result is None else keyed_rows(result[1])

    return read_objects


def keyed_rows(rows: pl.DataFrame) -> list[tuple[Any, Any]]:
    key_at = [COLUMNS.index(k) for k in KEY]
    return [(tuple(row[i] for i in key_at), row) for row in rows.select(COLUMNS).rows()]


def check_dead_letters_once(run: ImpressionsRun) -> None:
    """Dead letters and late events: each input position once (read_committed, as the reader must)."""
    for setting in ("DEAD_LETTER_TOPIC", "LATE_TOPIC"):
        keys = Counter(key for key, _ in read_topic(run.kafka.bootstrap, run.env[setting]))
        repeated = [k for k, n in keys.items() if n > 1]
        assert not repeated, f"{setting}: {len(repeated)} positions written twice, e.g. {repeated[0]!r}"
    dead = [json.loads(v) for _, v in read_topic(run.kafka.bootstrap, run.env["DEAD_LETTER_TOPIC"])]
    want = Counter(e.value for e in run.produced if e.kind == "invalid")
    assert Counter(raw_of(d) for d in dead) == want


@pytest.mark.parametrize("kind", ["objects", "delta"])
def test_impressions_through_random_crashes(kafka, s3, tmp_path: Path, kind: str) -> None:
    output_format = "delta" if kind == "delta" else "parquet"
    until_time_is_up(kind, tmp_path, impressions_sequence(kafka, s3, output_format), kafka.data_dir / "broker.log")


# Bookings into Kafka or Kinesis --------------------------------------------------------

BOOKING_OUTPUTS = ("ALERTS_TOPIC", "UNMATCHED_TOPIC", "DEAD_LETTER_TOPIC")


def booking_units(setting: str, key: Any, value: bytes) -> tuple:
    key = key if isinstance(key, str) else key.decode()
    if setting == "UNMATCHED_TOPIC":
        return setting, key, json.loads(value)["seen"]
    return setting, key


def bookings_sequence(kafka, kinesis_env: Callable[[], dict[str, str]] | None, kinesis=None):
    def one(plan: Plan, stats: Stats, tmp: Path) -> None:
        messages = generate_bookings(
            BookingTraffic(
                count=600 * (plan.attempts + 1), step_ms=500, invalid_fraction=0.02, seed=plan.rng.randrange(1 << 30)
            )
        )
        per = len(messages) // (plan.attempts + 1) + 1
        chunks = [messages[i * per : (i + 1) * per] for i in range(plan.attempts + 1)]
        if kinesis_env is None:
            env = {**booking_kafka_env(kafka), "KAFKA_READER": plan.reader}
            stats.row["native reader"] += plan.reader == "native"
            read_output = lambda name: read_topic(kafka.bootstrap, name)  # noqa: E731
            server_pid = kafka._process.pid if kafka._process else None

            def send(batch: list[GeneratedBooking]) -> None:
                produce_messages(messages_for(batch, env["CREATED_TOPIC"], env["EVENTS_TOPIC"]), kafka.bootstrap)
        else:
            from devstack.kinesis import read_stream
            from tests.e2e.test_kinesis_jobs import put_bookings

            env = kinesis_env()
            client = kinesis.client()
            read_output = lambda name: read_stream(client, name)  # noqa: E731
            server_pid = kinesis.pid

            def send(batch: list[GeneratedBooking]) -> None:
                put_bookings(client, env, batch)

        send(chunks[0])

        def read() -> list[tuple[Any, Any]]:
            return [(booking_units(s, k, v), v) for s in BOOKING_OUTPUTS for k, v in read_output(env[s])]

        reader = UnitReader(read)
        reader.start()
        dirs = stores(tmp, plan.layout)
        target = FLOWS["booking-correlation"]
        try:
            run_sequence(
                plan,
                stats,
                lambda: Processes(target, {**env, "BOUNDED": "false"}, tmp, plan.layout, dirs),
                lambda attempt: send(chunks[attempt + 1]),
                server_pid,
                lambda: bounded_finish(target, env, plan.layout, dirs),
            )
        finally:
            reader.finish()
        alerts, unmatched, invalid = expected_bookings(messages)
        want = {("ALERTS_TOPIC", b) for b in alerts} | {("UNMATCHED_TOPIC", b, s) for b, s in unmatched.items()}
        got = set(reader.seen)
        stats.row["records"] += len(want) + sum(invalid.values())
        stats.row["lost"] += len(want - got)
        stats.row["doubled"] += reader.doubled
        assert not reader.problems, reader.problems[:3]
        assert want == {u for u in got if u[0] != "DEAD_LETTER_TOPIC"}, f"{len(want - got)} outcomes lost"
        dead = [json.loads(v) for u, v in reader.seen.items() if u[0] == "DEAD_LETTER_TOPIC"]
        assert Counter(raw_of(d) for d in dead) == invalid

    return one


def booking_kafka_env(kafka) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    env = {
        "CREATED_TOPIC": f"created-{run}",
        "EVENTS_TOPIC": f"events-{run}",
        "ALERTS_TOPIC": f"alerts-{run}",
        "UNMATCHED_TOPIC": f"unmatched-{run}",
        "DEAD_LETTER_TOPIC": f"dead-{run}",
    }
    make_topics(kafka, *env.values())
    return {
        **env,
        "KAFKA_BROKERS": kafka.bootstrap,
        "BOOKING_TIMEOUT_SECONDS": "300",
        "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S),
        "KAFKA_BATCH_SIZE": "200",
    }


def test_bookings_into_kafka_through_random_crashes(kafka, tmp_path: Path) -> None:
    until_time_is_up("kafka", tmp_path, bookings_sequence(kafka, None), kafka.data_dir / "broker.log")


def test_bookings_into_kinesis_through_random_crashes(kafka, kinesis, kinesis_stream, tmp_path: Path) -> None:
    from tests.e2e.test_kinesis_jobs import booking_streams

    until_time_is_up(
        "kinesis", tmp_path, bookings_sequence(kafka, lambda: booking_streams(kinesis, kinesis_stream), kinesis)
    )
