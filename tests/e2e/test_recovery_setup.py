"""The recovery store in one step, and a wrong `-r` as one line instead of a Rust panic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows
from tests.support.jobs import FLOWS, ROOT, run_dataflow
from tests.support.oracles import expected_rows

INIT = "python -m connectors.recovery_store init"


def init(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "connectors.recovery_store", "init", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def good_env(kafka, s3, unique) -> dict[str, str]:
    topics = [f"in-{unique}", f"dead-{unique}", f"late-{unique}"]
    make_topics(kafka, *topics)
    s3.create_bucket(f"b-{unique}")
    return {
        "KAFKA_BROKERS": kafka.bootstrap,
        "IMPRESSIONS_TOPIC": topics[0],
        "DEAD_LETTER_TOPIC": topics[1],
        "LATE_TOPIC": topics[2],
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"b-{unique}",
        "BOUNDED": "true",
    }


def test_init_creates_a_store_the_job_runs_from_and_is_idempotent(kafka, s3, good_env, tmp_path: Path) -> None:
    store = tmp_path / "not" / "there" / "yet"
    created = init(str(store), "--partitions", "2")
    assert created.returncode == 0, created.stderr
    assert sorted(p.name for p in store.glob("*.sqlite3")) == ["part-0.sqlite3", "part-1.sqlite3"]
    again = init(str(store), "--partitions", "2")
    assert again.returncode == 0 and "already initialised" in again.stdout
    other = init(str(store), "--partitions", "3")
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines() == [
        f"recovery_store: {store} already holds a recovery store of 2 partitions: use --partitions 2, "
        "or a new directory for a new store"
    ]

    events = list(generate(TrafficShape(count=2_000, movies=4, users=10, step_ms=1_500, seed=9)))
    produce(iter(events), kafka.bootstrap, good_env["IMPRESSIONS_TOPIC"])
    result = run_dataflow(FLOWS["movie-impressions"], good_env, workers=2, recovery=store)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_s3_rows(s3, good_env["S3_BUCKET"], "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))


def _not_a_store(d: Path) -> None:
    d.mkdir()
    (d / "part-0.sqlite3").write_text("this is not sqlite")


@pytest.mark.parametrize("job", ["movie-impressions", "booking-correlation"])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "does not exist: create it with `{init} {store} --partitions 1`"),
        (Path.mkdir, "holds no recovery partitions (*.sqlite3): initialise it with `{init} {store} --partitions 1`"),
        (_not_a_store, "part-0.sqlite3 is not a bytewax recovery partition"),
    ],
    ids=["missing", "empty", "not-a-store"],
)
def test_a_wrong_recovery_directory_is_one_line(good_env, tmp_path: Path, job: str, make, message: str) -> None:
    store = tmp_path / "recovery"
    make(store)
    result = run_dataflow(FLOWS[job], good_env, recovery=store, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f"{job.replace('-', '_')}: recovery directory {store} (-r / BYTEWAX_RECOVERY_DIRECTORY)"
    )
    assert message.format(init=INIT, store=store) in last_line
