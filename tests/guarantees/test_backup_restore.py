"""State that outlives its volume: the job killed, every recovery directory deleted, started
again: the store comes back from its S3 backups and the output equals the oracle
(connectors/backup.py). Also a rollback to a savepoint older than the newest output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.backup_store import BackupConfig, BackupStore
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.e2e.test_booking_correlation import output_env
from tests.support.data import make_topics, read_topic
from tests.support.jobs import FLOWS, ROOT, Job, init_recovery, run_dataflow, wait_for
from tests.support.runs import BOUND_S, PodCluster, check_booking_outputs, newest_snapshot_epoch, traffic

HISTORY_S = 30  # bytewax's -b in a cluster: well past BACKUP_INTERVAL_SECONDS plus how far apart a loaded machine takes a round's copies


def enable_backups(env: dict[str, str], s3, bucket: str) -> BackupStore:
    """Backups every second, beside (not inside) the job's output prefix; the store to watch them."""
    run = f"run-{uuid.uuid4().hex[:6]}"
    env |= {
        "BACKUP_INTERVAL_SECONDS": "1",
        "BACKUP_S3_BUCKET": bucket,
        "BACKUP_S3_PREFIX": "state",
        "BACKUP_RUN": run,
        "BACKUP_RETENTION": "3",
        "S3_ENDPOINT_URL": s3.endpoint_url,
    }
    return BackupStore(BackupConfig(bucket, "state", run, s3.endpoint_url, "us-east-1"))


def newest_round_epoch(backups: BackupStore) -> int:
    """The epoch the newest complete round resumes from."""
    rounds = backups.rounds()
    return max((min(m.epoch for m in r) for r in rounds.values()), default=0)


def wait_for_backup_of_now(backups: BackupStore, newest_snapshot: Callable[[], int], job: Job) -> None:
    """Until the job stored a snapshot after this call and a complete round holds it."""
    before = newest_snapshot()
    wait_for(lambda: newest_snapshot() > before, 60, "a snapshot", job)
    stored = newest_snapshot()
    wait_for(lambda: newest_round_epoch(backups) > stored, 60, f"a backup past epoch {stored}", job, interval=0.5)


def test_impressions_restored_after_the_recovery_directory_is_deleted(s3, new_run) -> None:
    run = new_run()
    backups = enable_backups(run.env, s3, run.bucket)
    events = traffic(12_000, seed=61)
    run.produce(events[:6_000])
    job = run.start()
    wait_for(lambda: len(run.data_objects()) > 0, 90, "first objects", job)
    wait_for_backup_of_now(backups, run.newest_snapshot_epoch, job)
    job.kill()
    shutil.rmtree(run.recovery)
    run.produce(events[6_000:])
    time.sleep(BOUND_S + 1)  # down longer than the lateness bound
    result = run_dataflow(FLOWS["movie-impressions"], {**run.env, "BOUNDED": "true"}, recovery=run.recovery)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored backups" in result.stderr  # a fresh start would have refused the existing output
    run.assert_exact()
    assert len(backups.rounds()) <= 3 + 1, "old rounds were not pruned"  # retention, plus one being written


def booking_run(kafka, s3, name: str) -> tuple[dict[str, str], list, list, BackupStore]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-{name}{suffix}", "EVENTS_TOPIC": f"events-{name}{suffix}"}
    make_topics(kafka, *topics.values(), partitions=2)
    env = {**topics, **output_env(kafka, f"{name}-{suffix}"), "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S)}
    bucket = f"state-{suffix}"
    s3.create_bucket(bucket)
    backups = enable_backups(env, s3, bucket)
    messages = generate_bookings(BookingTraffic(count=4_000, step_ms=300, seed=23, invalid_fraction=0.01))
    records = list(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]))
    return env, messages, records, backups


def test_booking_alerts_restored_after_the_recovery_directory_is_deleted(kafka, s3, tmp_path: Path) -> None:
    env, messages, records, backups = booking_run(kafka, s3, "bk")
    half = len(records) // 2
    produce_messages(records[:half], kafka.bootstrap)
    recovery = init_recovery(tmp_path / "recovery")
    job = Job(FLOWS["booking-correlation"], {**env, "BOUNDED": "false"}, tmp_path / "run-1.log", recovery=recovery)
    try:
        wait_for(lambda: len(read_topic(kafka.bootstrap, env["ALERTS_TOPIC"])) >= 500, 120, "alerts", job)
        wait_for_backup_of_now(backups, lambda: newest_snapshot_epoch(recovery), job)
    finally:
        job.kill()
    before = len(read_topic(kafka.bootstrap, env["ALERTS_TOPIC"]))
    shutil.rmtree(recovery)
    produce_messages(records[half:], kafka.bootstrap)
    result = run_dataflow(FLOWS["booking-correlation"], {**env, "BOUNDED": "true"}, recovery=recovery)
    (tmp_path / "run-2.log").write_text(result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored backups" in result.stderr
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)
    # Resumed, not started over: a fresh start would repeat every alert sent before the kill.
    alerts = read_topic(kafka.bootstrap, env["ALERTS_TOPIC"])
    repeats = len(alerts) - len({key for key, _ in alerts})
    restored = [line for line in result.stderr.splitlines() if "restored" in line or "resum" in line]
    assert repeats < before // 2, f"{repeats} of {before} alerts repeated: the run started over; {restored}"


class BackedUpCluster(PodCluster):
    """Processes that keep bytewax's snapshot history (-b) as a cluster with backups must."""

    def start_process(self, i: int, attempt: str = "", **overrides: str) -> Job:
        log = self.tmp_path / f"start-{self.starts}-process-{i}{attempt}.log"
        env = {**self.env, **overrides}
        job = Job(self.target, env, log, recovery=self.dirs[i], cluster=(self.addresses, i), backup_s=HISTORY_S)
        self.jobs.append(job)
        return job

    def finish(self, **overrides: str) -> list[str]:
        self.starts += 1
        from tests.support.jobs import cluster_addresses

        self.addresses = cluster_addresses(len(self.dirs))
        self.jobs = []
        jobs = [self.start_process(i, BOUNDED="true", **overrides) for i in range(len(self.dirs))]
        for job in jobs:
            assert job.wait(240) == 0, job.output()[-3000:]
        return [job.output() for job in jobs]


@pytest.mark.parametrize("job_name", ["movie-impressions", "booking-correlation"])
def test_two_processes_restored_after_every_recovery_directory_is_deleted(
    kafka, s3, new_run, tmp_path: Path, job_name: str
) -> None:
    if job_name == "movie-impressions":
        run = new_run()
        backups = enable_backups(run.env, s3, run.bucket)
        events = traffic(12_000, seed=67)
        env = run.env
        first, rest = (lambda: run.produce(events[:4_000])), (lambda: run.produce(events[4_000:], 1500.0))
    else:
        env, messages, records, backups = booking_run(kafka, s3, "bk2")
        split = len(records) // 3
        first = lambda: produce_messages(records[:split], kafka.bootstrap)  # noqa: E731
        rest = lambda: produce_messages(records[split:], kafka.bootstrap, 1500.0)  # noqa: E731
    first()
    cluster = BackedUpCluster(FLOWS[job_name], env, tmp_path)
    try:
        cluster.start()
        feeder = threading.Thread(target=rest)
        feeder.start()
        for job in cluster.jobs:
            wait_for(lambda: cluster.every_directory_has_a_snapshot_past(1), 90, "a snapshot", job)
        wait_for_backup_of_now(backups, cluster.newest_snapshot_epoch, cluster.jobs[0])
        cluster.kill()
        feeder.join()
        for directory in cluster.dirs:
            shutil.rmtree(directory)
        time.sleep(BOUND_S + 1)
        logs = cluster.finish()
    finally:
        cluster.kill()
    assert all("restored backups" in log for log in logs), "a process did not restore its partition"
    if job_name == "movie-impressions":
        run.assert_exact()
    else:
        check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)


def test_a_rollback_to_a_savepoint_older_than_the_newest_output_is_exact(s3, new_run) -> None:
    """The savepoint is taken early; much output is committed after it; the job rolls back to it,
    crashes again right after its first new snapshot, and finishes: every row once."""
    run = new_run()
    enable_backups(run.env, s3, run.bucket)
    events = traffic(16_000, seed=71)
    run.produce(events[:5_000])
    job = run.start()
    wait_for(lambda: len(run.data_objects()) > 0, 90, "first objects", job)
    savepoint = subprocess.run(
        [sys.executable, "-m", "connectors.backup", "savepoint", "early", "-r", str(run.recovery)],
        env={**os.environ, **run.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert savepoint.returncode == 0, savepoint.stderr
    assert "savepoint early: s3://" in savepoint.stdout
    at_savepoint = len(run.data_objects())
    run.produce(events[5_000:11_000])
    wait_for(lambda: len(run.data_objects()) > at_savepoint + 10, 90, "output past the savepoint", job)
    before = run.newest_snapshot_epoch()
    wait_for(lambda: run.newest_snapshot_epoch() > before, 60, "a snapshot", job)
    job.kill()

    # Roll back: the directory still holds newer state; the savepoint replaces it.
    run.env["RESTORE_FROM_SAVEPOINT"] = "early"
    job = run.start()
    wait_for(lambda: "restored savepoints early" in job.output(), 60, "the rollback", job)
    wait_for(lambda: run.newest_snapshot_epoch() > 1, 60, "a snapshot after the rollback", job)
    job.kill()  # again, before the replay has passed what the first run committed
    run.produce(events[11_000:])
    time.sleep(BOUND_S + 1)
    run.finish()  # RESTORE_FROM_SAVEPOINT still set: the marker says it was restored, so it resumes
    log_text = "".join(p.read_text(errors="replace") for p in run.tmp_path.glob("run-*.log"))
    assert log_text.count("restored savepoints early") == 1
    run.assert_exact()
