"""Backups of the recovery store: naming, manifests, the choice of a round, pruning, the online copy."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors import backup_layout as layout
from connectors.backup import Backups, history_seconds
from connectors.backup_store import BackupConfig, copy_store, cut
from connectors.recovery_store.partition_files import check_store, read_progress
from connectors.recovery_store.resume_epoch import resume_epoch_of

ROOT, RUN = "impressions/", "group-1"


def test_ticks_are_shared_and_rounds_sort_by_time() -> None:
    assert layout.next_tick(100.0, 30) == 120.0
    assert layout.next_tick(120.0, 30) == 150.0  # on a tick: the next one
    assert layout.round_name(0) == "19700101T000000Z"
    assert layout.round_name(59) < layout.round_name(61)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("impressions/_recovery/group-1/backups/20250101T000000Z/p0.of2.manifest.json", ("backups", "p0", 2)),
        ("impressions/_recovery/group-1/savepoints/before-v2/p0-1-2.of3.manifest.json", ("savepoints", "p0-1-2", 3)),
        ("impressions/_recovery/group-1/backups/20250101T000000Z/p0.1a2b3c4d/part-0.sqlite3.gz", None),
        ("impressions/_recovery/other-run/backups/x/p0.of2.manifest.json", None),
        ("impressions/_recovery/group-1/trash/x/p0.of2.manifest.json", None),
        ("impressions/2025/01/01/part.parquet", None),
    ],
)
def test_manifest_keys_name_kind_owner_and_store_size(key: str, expected: tuple | None) -> None:
    listed = layout.parse_key(ROOT, RUN, key)
    assert (listed and (listed.kind, listed.owner, listed.count)) == expected


def test_manifest_key_round_trips() -> None:
    key = layout.manifest_key(ROOT, RUN, layout.BACKUPS, "r1", [2, 0, 1], 3)
    assert key == "impressions/_recovery/group-1/backups/r1/p0-1-2.of3.manifest.json"
    listed = layout.parse_key(ROOT, RUN, key)
    assert listed is not None and listed.parts == {0, 1, 2}
    assert layout.manifest_key("", RUN, layout.SAVEPOINTS, "sp", [0], 1).startswith("_recovery/group-1/savepoints/sp/")


def manifest(name: str, parts: tuple[int, ...], count: int = 2, execution: int = 3, at: int = 0, pid=None):
    return layout.Manifest(layout.BACKUPS, name, parts, count, pid, execution, 10 + at, at, 0.1, ({"stored_bytes": 5},))


def test_manifest_json_round_trips_and_refuses_other_formats() -> None:
    m = manifest("r1", (0,), pid=0)
    assert layout.Manifest.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="format"):
        layout.Manifest.from_json({**m.to_json(), "format": 99})


@pytest.mark.parametrize(
    ("newest_snapshot", "collected", "expected"),
    [
        (None, None, 1),  # nothing written yet: from the start
        (7, None, 7),  # epoch 7 is being written: complete below it
        (7, 9, 10),  # bytewax collected up to 9: a resume loads what it kept, below 10
        (12, 9, 12),
        (10, 9, 10),
    ],
)
def test_a_file_is_complete_below_its_newest_snapshot_or_collection(newest_snapshot, collected, expected) -> None:
    assert layout.file_epoch(newest_snapshot, collected) == expected


def test_a_round_is_cut_where_every_copy_is_complete() -> None:
    round_ = [manifest("r", (0,), at=4), manifest("r", (1,), at=2)]
    assert layout.round_epoch(round_) == 12
    assert layout.resumable(round_)
    collected_past = layout.Manifest(layout.BACKUPS, "r", (0,), 2, 0, 3, 14, 4, collected=12)
    assert not layout.resumable([collected_past, round_[1]])  # it kept only snapshots at 12 or later


def test_a_copy_collected_past_the_cut_is_resumable_if_nothing_was_written_from_the_cut_to_its_collection() -> None:
    # The cut is 12 (copy 1). Copy 0 was collected up to 13: each key keeps its newest snapshot at
    # or below 13, so a resume at 12 finds every key's snapshot below 12 only if none is in 12..13.
    def copy(collected_snapshot: int | None) -> layout.Manifest:
        return layout.Manifest(layout.BACKUPS, "r", (0,), 2, 0, 3, 14, 4, 0.0, (), 13, collected_snapshot)

    behind = layout.Manifest(layout.BACKUPS, "r", (1,), 2, 1, 3, 12, 4)
    assert layout.round_epoch([copy(9), behind]) == 12
    assert layout.resumable([copy(9), behind])  # idle since epoch 9: nothing collected that the resume needs
    assert not layout.resumable([copy(12), behind])  # a snapshot at 12 replaced the one below it
    assert not layout.resumable([copy(None), behind])  # not recorded (an older manifest): judged as before


def test_a_round_is_complete_when_its_manifests_hold_every_partition() -> None:
    def listed(kind: str, name: str, owner: str, count: int) -> layout.Listed:
        return layout.Listed(kind, name, owner, count, f"{name}/{owner}")

    items = [
        listed("backups", "r1", "p0", 2),
        listed("backups", "r1", "p1", 2),
        listed("backups", "r2", "p0", 2),  # p1 never wrote r2
        listed("savepoints", "sp", "p0-1", 2),
        listed("backups", "r3", "p0", 2),
        listed("backups", "r3", "p1", 3),  # stores of different sizes
    ]
    assert set(layout.complete(items)) == {("backups", "r1"), ("savepoints", "sp")}


def test_a_round_of_every_partition_once_is_restorable_and_each_process_takes_its_own() -> None:
    round_ = [manifest("r", (0,), pid=0, at=1), manifest("r", (1,), pid=1, at=2)]
    assert layout.consistent(round_)
    assert not layout.consistent(round_[:1])
    assert not layout.consistent([*round_, manifest("r", (1,), pid=1)])
    assert layout.mine(round_, [], 1) == [round_[1]]  # an empty directory: by process id
    assert layout.mine(round_, [0], 1) == [round_[0]]  # a freshly initialised partition: by its index
    assert layout.mine(round_, [], None) == round_  # one process: the whole store
    assert layout.mine([manifest("r", (0, 1))], [0], 0) == []  # a copy of more than this directory holds
    rounds = {("backups", "old"): round_, ("backups", "new"): [manifest("n", (0, 1), at=9)]}
    assert layout.newest_first(rounds) == [("backups", "new"), ("backups", "old")]


@pytest.mark.parametrize(
    ("rounds", "keep", "expected"),
    [
        ({"r1": ["p0", "p1"], "r2": ["p0", "p1"], "r3": ["p0", "p1"]}, 2, ["r1"]),
        ({"r1": ["p0", "p1"], "r2": ["p0"], "r3": ["p0", "p1"]}, 2, []),  # r2 incomplete: r1 is still kept
        ({"r1": ["p0", "p1"], "r2": ["p0"], "r3": ["p0", "p1"], "r4": ["p0", "p1"]}, 2, ["r1", "r2"]),
        ({"r1": ["p0", "p1"], "r2": ["p0", "p1"], "r5": ["p1"]}, 1, ["r1"]),  # r5 in progress: kept
        ({"r1": ["p0"]}, 1, []),
    ],
)
def test_pruning_keeps_the_newest_complete_rounds(rounds: dict, keep: int, expected: list[str]) -> None:
    listed = [layout.Listed(layout.BACKUPS, n, o, 2, f"{n}/{o}") for n, owners in rounds.items() for o in owners]
    savepoint = layout.Listed(layout.SAVEPOINTS, "a-savepoint", "p0-1", 2, "sp")
    assert layout.to_prune([*listed, savepoint], keep) == expected


def test_a_round_of_files_without_manifests_goes_with_the_older_rounds() -> None:
    listed = [layout.Listed(layout.BACKUPS, n, o, 2, f"{n}/{o}") for n in ("r1", "r2") for o in ("p0", "p1")]
    assert layout.to_prune(listed, 1, seen=["r0", "r3"]) == ["r0", "r1"]  # r3: being written
    assert layout.to_prune(listed, 3, seen=["r0"]) == []


def test_names_are_one_key_segment() -> None:
    assert layout.valid_name("before-v2.1_rollout")
    for bad in ("", "../x", "a/b", "-x", "x" * 65, "sp ace"):
        assert not layout.valid_name(bad)


def test_bytewax_history_is_read_as_bytewax_run_reads_it() -> None:
    assert history_seconds(["x:flow", "-r", "d", "-b", "30"], {}) == 30
    assert history_seconds(["x:flow"], {"BYTEWAX_RECOVERY_BACKUP_INTERVAL": "12"}) == 12
    assert history_seconds(["x:flow"], {}) == 0


def write_epochs(directory: Path, stop: threading.Event, written: list[int]) -> None:
    """What bytewax does per epoch, in its order: the epoch's snapshots, then the frontier past it."""
    with closing(sqlite3.connect(directory / "part-0.sqlite3", timeout=60)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (1, 1, 1)")
        epoch = 1
        while not stop.is_set():
            with db:
                for key in range(20):
                    blob = bytes([epoch % 256]) * 2000
                    db.execute(
                        "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('step', ?, ?, ?)",
                        (f"k{key}", epoch, blob),
                    )
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO fronts (ex_num, worker_index, worker_frontier) VALUES (1, 0, ?)",
                    (epoch + 1,),
                )
            written.append(epoch)
            epoch += 1


def test_the_online_copy_of_a_store_being_written_is_a_consistent_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    init_db_dir(store, 1)
    first = tmp_path / "first"
    first.mkdir()
    assert copy_store(store, first) == (-1, 1, [0], 1, 0, 0)  # nothing ran yet: a copy from the start
    stop, written = threading.Event(), []
    writer = threading.Thread(target=write_epochs, args=(store, stop, written))
    writer.start()
    copies: list = []
    try:
        while len(copies) < 20:
            assert writer.is_alive(), "the writer stopped"
            if len(written) > len(copies) * 3:
                into = tmp_path / f"copy-{len(copies)}"
                into.mkdir()
                copies.append((into, copy_store(store, into)))
            else:
                stop.wait(0.001)
    finally:
        stop.set()
        writer.join()
    for into, (execution, epoch, parts, count, _, _) in copies:
        with closing(sqlite3.connect(into / "part-0.sqlite3")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            held = db.execute("SELECT DISTINCT snap_epoch FROM snaps ORDER BY 1").fetchall()
            assert all(e < epoch for (e,) in held), "a snapshot at or past the cut"
            # every epoch below the cut is there for every key: the copy can resume from it
            assert [e for (e,) in held] == list(range(1, epoch))
            assert db.execute("SELECT COUNT(*) FROM snaps").fetchone() == (20 * (epoch - 1),)
        assert check_store(into) == [(0, 1)]
        assert (execution, parts, count) == (1, [0], 1)
        assert resume_epoch_of(read_progress(into)) == epoch
    assert len({copy[1] for _, copy in copies}) > 5, "the copies did not follow the writer"


def test_a_restored_copy_resumes_no_later_than_the_round_allows(tmp_path: Path) -> None:
    """The partition holding the progress may be newer than another process's copy: the cut
    lowers frontiers and resume epochs, so bytewax resumes where every copy is complete."""
    store = tmp_path / "store"
    store.mkdir()
    init_db_dir(store, 1)
    with closing(sqlite3.connect(store / "part-0.sqlite3")) as db, db:
        db.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 2, 1), (1, 2, 9)")
        db.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (1, 0, 12), (1, 1, 11)")
        for epoch in (3, 8, 10):
            db.execute(
                "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('s', 'k', ?, NULL)", (epoch,)
            )
    with closing(sqlite3.connect(store / "part-0.sqlite3")) as db, db:
        db.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (0, 9)")
    copied = tmp_path / "copied"
    copied.mkdir()
    assert copy_store(store, copied)[1:] == (10, [0], 1, 9, 8)  # newest snapshot 10 (collected up to 9, kept 8)
    assert resume_epoch_of(read_progress(store)) == 11
    cut(store / "part-0.sqlite3", 6)
    assert resume_epoch_of(read_progress(store)) == 6
    with closing(sqlite3.connect(store / "part-0.sqlite3")) as db:
        assert db.execute("SELECT snap_epoch FROM snaps").fetchall() == [(3,)]


class MemoryBackups:
    """A bucket of backups in memory, with the calls of BackupStore the backup thread makes."""

    def __init__(self, config: BackupConfig) -> None:
        self.config, self.root, self.objects = config, config.location().root(), {}

    def put(self, key: str, body: bytes, *, new: bool = False) -> bool:
        if new and key in self.objects:
            return False
        self.objects[key] = body
        return True

    def keys(self, under: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(under))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    def manifest(self, key: str) -> layout.Manifest | None:
        return None


def newest_snapshot_seen_by_another_process(part: Path) -> int:
    """What a backup's child process (or any reader beside the job) reads of the live store."""
    query = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT MAX(snap_epoch) FROM snaps').fetchone()[0])"
    read = subprocess.run(
        [sys.executable, "-c", query, str(part)], capture_output=True, text=True, timeout=60, check=True
    )
    return int(read.stdout)


def test_backups_taken_in_the_job_process_leave_bytewax_its_store(tmp_path: Path) -> None:
    """The backup thread runs beside bytewax, which links its own SQLite, while it writes the
    store: after rounds taken and pruned, bytewax's WAL is still there and what it commits
    next is what other processes read (a second SQLite library's close in this process would
    delete the WAL under it and drop its locks)."""
    store = tmp_path / "store"
    store.mkdir()
    init_db_dir(store, 1)
    part = store / "part-0.sqlite3"
    config = BackupConfig("bucket", "state", "run", interval_seconds=1, retention=1)
    backups = Backups(config, store, None)
    bucket = MemoryBackups(config)
    backups.store = bucket  # type: ignore[assignment]
    seen: dict[str, object] = {}

    def beside_the_flow(item: int) -> int:
        if item == 20:
            rounds = [backups.once(layout.BACKUPS, layout.round_name(tick)) for tick in (1_000, 2_000, 3_000)]
            seen["rounds"] = [r is not None for r in rounds]
            seen["wal"] = Path(f"{part}-wal").exists()
            seen["after backups"] = newest_snapshot_seen_by_another_process(part)
        if item == 70:
            seen["later"] = newest_snapshot_seen_by_another_process(part)
        return item

    flow = Dataflow("store-beside-backups")
    items = op.map("beside", op.input("in", flow, TestingSource(range(80))), beside_the_flow)
    counts = op.stateful_map("count", op.key_on("k", items, lambda _: "k"), lambda s, v: ((s or 0) + 1,) * 2)
    op.output("out", counts, TestingSink([]))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(store)))

    assert seen["rounds"] == [True, True, True]
    assert seen["wal"], "the job's WAL was deleted while bytewax had the store open"
    assert seen["later"] > seen["after backups"], "what bytewax committed after the backups is invisible"
    names = {item.name for key in bucket.objects if (item := layout.parse_key(bucket.root, "run", key))}
    assert names == {layout.round_name(3_000)}, "pruning kept other rounds than the newest"
