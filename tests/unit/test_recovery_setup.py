"""Recovery store set-up and checks: one-line errors, idempotent init, one namespace per store."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.namespace import NAMESPACE_FILE, store_namespace
from connectors.recovery_store.partition_files import check_store, init_store, is_fresh, read_progress
from connectors.recovery_store.resume import prepare_resume
from connectors.recovery_store.state_settings import RECORDED_LATER, SHAPE_FILE, check_state_settings
from dataflows.settings import MovieImpressionsSettings


def test_init_creates_the_directory_and_is_idempotent(tmp_path: Path) -> None:
    store = tmp_path / "missing" / "recovery"
    assert "created partitions [0, 1]" in init_store(store, 2)
    assert sorted(p.name for p in store.glob("*.sqlite3")) == ["part-0.sqlite3", "part-1.sqlite3"]
    namespace = (store / NAMESPACE_FILE).read_text().strip()
    assert "already initialised" in init_store(store, 2)
    assert (store / NAMESPACE_FILE).read_text().strip() == namespace
    assert check_store(store) == [(0, 2), (1, 2)]


def test_init_refuses_another_partition_count_for_an_existing_store(tmp_path: Path) -> None:
    init_store(tmp_path, 2)
    with pytest.raises(RecoveryStoreError, match=r"already holds a recovery store of 2 partitions: use --partitions 2"):
        init_store(tmp_path, 3)


def test_init_of_one_part_for_a_volume_per_pod(tmp_path: Path) -> None:
    init_store(tmp_path, 3, only=1)
    assert [p.name for p in tmp_path.glob("*.sqlite3")] == ["part-1.sqlite3"]
    assert check_store(tmp_path) == [(1, 3)]


def test_processes_sharing_a_store_agree_on_its_namespace(tmp_path: Path) -> None:
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(store_namespace(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen) == 8
    assert [p.name for p in tmp_path.iterdir()] == [NAMESPACE_FILE]  # no scratch files left


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "does not exist: create it with `python -m connectors.recovery_store init"),
        (lambda d: d.write_text("x"), "is not a directory"),
        (lambda d: d.mkdir(), "holds no recovery partitions (*.sqlite3): initialise it with"),
        (
            lambda d: (d.mkdir(), (d / "part-0.sqlite3").write_text("not a database")),
            "part-0.sqlite3 is not a bytewax recovery partition",
        ),
        (
            lambda d: (d.mkdir(), _sqlite(d / "part-0.sqlite3", "CREATE TABLE other (x)")),
            "part-0.sqlite3 is not a bytewax recovery partition (missing tables",
        ),
    ],
)
def test_a_wrong_recovery_directory_is_one_line_naming_r_and_the_fix(tmp_path: Path, make, message: str) -> None:
    store = tmp_path / "recovery"
    make(store)
    with pytest.raises(RecoveryStoreError) as error:
        prepare_resume(["x:flow", "-r", str(store)], {})
    text = str(error.value)
    assert message in text and "-r" in text and "\n" not in text


def test_no_store_is_refused_unless_allowed() -> None:
    with pytest.raises(RecoveryStoreError, match=r"ALLOW_NO_RECOVERY=true") as error:
        prepare_resume(["x:flow"], {})
    assert "python -m connectors.recovery_store init" in str(error.value)
    resume = prepare_resume(["x:flow"], {}, allow_no_recovery=True)
    assert resume.directory is None and resume.fresh
    # Each run without a store is a new run: a new namespace every time.
    assert resume.sink_namespace != prepare_resume(["x:flow"], {"ALLOW_NO_RECOVERY": "true"}).sink_namespace
    with pytest.raises(RecoveryStoreError):
        prepare_resume(["x:flow"], {"ALLOW_NO_RECOVERY": "false"})


def test_a_store_is_fresh_until_an_execution_is_recorded(tmp_path: Path) -> None:
    init_store(tmp_path, 1)
    first = prepare_resume(["x:flow", "-r", str(tmp_path)], {})
    assert first.fresh and first.directory == tmp_path
    _sqlite(tmp_path / "part-0.sqlite3", "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 1, 1)")
    again = prepare_resume(["x:flow"], {"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path)})
    assert not again.fresh and again.sink_namespace == first.sink_namespace


def _sqlite(path: Path, statement: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


@pytest.mark.parametrize(
    ("partitions", "only", "message"),
    [(0, None, "--partitions 0: a store needs at least 1 partition"), (2, 2, "--part 2 is not a partition of a 2-")],
)
def test_init_arguments_out_of_range_are_one_line(tmp_path: Path, partitions: int, only: int | None, message: str):
    with pytest.raises(RecoveryStoreError, match=message):
        init_store(tmp_path, partitions, only)


def test_state_settings_bind_only_once_the_store_holds_state(tmp_path: Path) -> None:
    """A start that failed before any snapshot (a wrong setting) leaves nothing to clash with."""
    check_state_settings(tmp_path, {"TRANSPORT": "kinesis"}, fresh=True)  # failed later, no state written
    check_state_settings(tmp_path, {"TRANSPORT": "kafka"}, fresh=True)  # the corrected start
    check_state_settings(tmp_path, {"TRANSPORT": "kafka"}, fresh=False)  # resumes with what it ran with
    with pytest.raises(RecoveryStoreError, match="TRANSPORT 'kafka' -> 'kinesis'"):
        check_state_settings(tmp_path, {"TRANSPORT": "kinesis"}, fresh=False)


def test_a_store_of_the_earlier_window_state_is_refused_with_one_line(tmp_path: Path) -> None:
    """Windows keyed by movie shard: a store from before (its record lacks WINDOW_STATE,
    or it has no record at all) holds per-movie window state, which this version would misread."""
    shape = MovieImpressionsSettings.from_env({}).state_shape()
    assert shape["WINDOW_STATE"] != RECORDED_LATER["WINDOW_STATE"]
    before = {name: value for name, value in shape.items() if name != "WINDOW_STATE"}
    (tmp_path / SHAPE_FILE).write_text(json.dumps(before))
    with pytest.raises(RecoveryStoreError, match=r"WINDOW_STATE 'one key per movieId.*resume it with the version"):
        check_state_settings(tmp_path, shape, fresh=False)
    unrecorded = tmp_path / "older"
    unrecorded.mkdir()
    with pytest.raises(RecoveryStoreError, match="WINDOW_STATE"):
        check_state_settings(unrecorded, shape, fresh=False)
    check_state_settings(tmp_path, shape, fresh=True)  # a new run records what it runs with
    check_state_settings(tmp_path, shape, fresh=False)


def test_a_pod_whose_only_record_is_a_crashed_first_epoch_resumes_rather_than_starting_anew(tmp_path: Path) -> None:
    """With one directory per pod, the executions may be recorded in another pod's partition:
    this pod holds only the snapshots its crashed first epoch left (dropped as abandoned).
    Its sink may have written output then, so the start is a resume, not a fresh run."""
    store = tmp_path / "pod-1"
    init_store(store, partitions=1)  # this pod's part of the store: no execution recorded in it
    with closing(sqlite3.connect(store / "part-0.sqlite3")) as db, db:
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('s', 'k', 1, NULL)")
    resume = prepare_resume(["x:flow", "-r", str(store)], {})
    assert not resume.fresh


def test_a_partition_this_process_holds_open_is_never_opened_by_pythons_sqlite(tmp_path: Path) -> None:
    """A live partition (held open, as bytewax holds it in the job's process) is refused in one line."""
    store = tmp_path / "store"
    init_store(store, 1)
    assert is_fresh(store) and len(read_progress(store)) == 1  # a store nobody holds reads as before
    with open(store / "part-0.sqlite3", "rb"):
        for read in (check_store, is_fresh, read_progress):
            with pytest.raises(RecoveryStoreError, match="open in this process"):
                read(store)
    assert is_fresh(store)
