"""Start-up is one visible step (dataflows/skeleton.start): metrics served, the recovery
store checked and repaired, and what the run resumes from returned."""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.request
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.state_settings import SHAPE_FILE, check_state_settings
from connectors.transports import kafka_native
from dataflows import skeleton
from dataflows.settings import MovieImpressionsSettings
from devstack.processes import free_port


def _store_with_an_abandoned_snapshot(directory: Path) -> int:
    """A store after one run, plus a snapshot at the epoch the next run resumes from
    (what a SIGKILL between an epoch's snapshots and its frontier leaves)."""
    init_db_dir(directory, 1)
    flow = Dataflow("start")
    keyed = op.key_on("k", op.input("in", flow, TestingSource(range(20), 5)), str)
    op.output("out", op.stateful_map("count", keyed, lambda s, v: ((s or 0) + 1,) * 2), TestingSink([]))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(directory)))
    [store] = directory.glob("*.sqlite3")
    with closing(sqlite3.connect(store)) as db, db:
        [(frontier,)] = db.execute("SELECT worker_frontier FROM fronts")
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
            "SELECT step_id, state_key || '-abandoned', ?, ser_change FROM snaps LIMIT 1",
            (frontier,),
        )
    return frontier


def _snapshots_from(directory: Path, epoch: int) -> int:
    [store] = directory.glob("*.sqlite3")
    with closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT COUNT(*) FROM snaps WHERE snap_epoch >= ?", (epoch,)).fetchone()[0]


def test_start_serves_metrics_repairs_the_store_and_says_what_it_resumes(tmp_path: Path) -> None:
    frontier = _store_with_an_abandoned_snapshot(tmp_path)
    assert _snapshots_from(tmp_path, frontier) == 1
    port = free_port()
    settings = MovieImpressionsSettings.from_env({"METRICS_PORT": str(port)})
    check_state_settings(tmp_path, settings.state_shape(), fresh=True)  # as the run that made it recorded

    resume = skeleton.start(settings, ["dataflows.movie_impressions:flow", "-r", str(tmp_path)], {})

    assert resume.directory == tmp_path and not resume.fresh
    assert _snapshots_from(tmp_path, frontier) == 0
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "waxstreams_events_total" in body


def test_a_process_past_those_holding_the_store_starts_with_an_empty_directory(tmp_path: Path) -> None:
    """Scaled past the store's holders (k8s/README.md, Scaling), process 2 of 3 has no
    partition: it has no state to check, and a record of it must not stop it."""
    settings = MovieImpressionsSettings.from_env({"METRICS_PORT": str(free_port())})
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    argv = ["dataflows.movie_impressions:flow", "-r", str(tmp_path), "-a", addresses, "-i", "2"]

    resume = skeleton.start(settings, argv, {})

    assert resume.directory == tmp_path and not resume.fresh
    assert not (tmp_path / SHAPE_FILE).exists(), "it recorded state settings of a store it does not hold"


def test_start_refuses_to_run_without_a_store_in_one_line() -> None:
    with pytest.raises(RecoveryStoreError, match="ALLOW_NO_RECOVERY") as refused:
        skeleton.start(MovieImpressionsSettings.from_env({}), ["dataflows.movie_impressions:flow"], {})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("reader", ["auto", "confluent"])
def test_auto_without_the_native_reader_says_so_in_one_info_line_at_start(reader: str, monkeypatch, caplog) -> None:
    why = "the native Kafka reader (waxstreams_native) is not installed: run make install"
    monkeypatch.setattr(kafka_native, "unusable", lambda config: why)
    settings = MovieImpressionsSettings.from_env({"KAFKA_READER": reader, "ALLOW_NO_RECOVERY": "true"})
    with caplog.at_level(logging.INFO):
        skeleton.start(settings, ["dataflows.movie_impressions:flow"], {})
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "KAFKA_READER" in r.getMessage()]
    expected = f"KAFKA_READER=auto: reading Kafka with confluent-kafka, since {why}"
    assert said == ([(logging.INFO, expected)] if reader == "auto" else [])


def test_full_collections_come_every_interval_until_stopped() -> None:
    collections, stop = threading.Semaphore(0), threading.Event()
    thread = skeleton.collect_periodically(0.01, stop, collections.release)
    try:
        assert all(collections.acquire(timeout=10) for _ in range(3))
    finally:
        stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
