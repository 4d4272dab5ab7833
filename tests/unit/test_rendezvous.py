"""Processes with one recovery directory each agree on the resume epoch (connectors/rendezvous.py):
the cluster bytewax.run forms, process 0's bookkeeping, and the protocol's failure paths."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from connectors import rendezvous
from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.partition_files import init_store, read_progress
from connectors.recovery_store.resume import prepare_resume
from connectors.recovery_store.resume_epoch import PartitionProgress
from connectors.rendezvous import (
    Cluster,
    Coordinator,
    Gathering,
    RendezvousSettings,
    ResumeAgreement,
    ask,
    cluster_from,
)
from devstack.processes import free_port

# Execution 1 of 2 workers resumed at 1; worker 0 got to 5, worker 1 to 4: bytewax resumes at 4.
EXS = ((1, 2, 1),)
FRONTS = {0: ((1, 0, 5),), 1: ((1, 1, 4),)}
RESUME = 4
SNAPSHOT_EPOCHS = (3, 4, 5)


def test_the_cluster_is_what_bytewax_run_forms_from_its_arguments(tmp_path: Path) -> None:
    argv = ["dataflows.movie_impressions:flow", "-r", "/rec", "-a", "h0:2101;h1:2102", "-i", "1"]
    assert cluster_from(argv, {}) == Cluster(1, ("h0:2101", "h1:2102"))
    env = {"BYTEWAX_ADDRESSES": "h0:1;h1:2;h2:3", "BYTEWAX_PROCESS_ID": "0"}
    assert cluster_from(["x:flow"], env) == Cluster(0, ("h0:1", "h1:2", "h2:3"))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("job-0.job:9999\njob-1.job:9999\n\n")
    pod = {"BYTEWAX_POD_NAME": "job-1", "BYTEWAX_STATEFULSET_NAME": "job", "BYTEWAX_HOSTFILE_PATH": str(hostfile)}
    cluster = cluster_from(["x:flow"], pod)
    assert cluster == Cluster(1, ("job-0.job:9999", "job-1.job:9999"))
    assert cluster.coordinator_host == "job-0.job"
    # One process: today's path.
    assert cluster_from(["x:flow", "-w", "2"], {}) is None
    assert cluster_from(["x:flow", "-a", "h0:1", "-i", "0"], {}) is None


def _progress(index: int, exs=EXS, fronts=None) -> PartitionProgress:
    return PartitionProgress(index, 2, exs if index == 0 else (), FRONTS[index] if fronts is None else fronts)


def test_process_zero_decides_once_every_partition_reported() -> None:
    gathering = Gathering(2)
    assert gathering.offer(0, [_progress(0)]) is None
    assert gathering.missing() == [1] and gathering.resume_epoch() is None
    assert gathering.offer(1, [_progress(1)]) is None
    assert gathering.offer(1, [_progress(1)]) is None  # a restarted process reports the same rows again
    assert gathering.missing() == [] and gathering.resume_epoch() == RESUME


def test_a_partition_of_another_store_is_refused_in_one_line() -> None:
    error = Gathering(2).offer(1, [PartitionProgress(1, 3, (), ())])
    assert error is not None and "\n" not in error
    assert "process 1 holds partition 1 of a 3-partition store, process 0 one of 2" in error
    assert "--partitions 2 --part <process id>" in error


def _store(directory: Path, part: int) -> Path:
    """Partition `part` of a 2-partition store after a crash: progress rows, snapshots at 3, 4 and 5."""
    init_store(directory, 2, only=part)
    with closing(sqlite3.connect(directory / f"part-{part}.sqlite3")) as db, db:
        if part == 0:
            db.executemany("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", EXS)
        db.executemany("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", FRONTS[part])
        db.executemany(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('s', ?, ?, NULL)",
            [(f"k{part}", epoch) for epoch in SNAPSHOT_EPOCHS],
        )
    return directory


def _snapshot_epochs(directory: Path) -> list[int]:
    [part] = directory.glob("*.sqlite3")
    with closing(sqlite3.connect(part)) as db:
        return sorted(e for (e,) in db.execute("SELECT snap_epoch FROM snaps"))


@pytest.fixture
def meeting() -> Iterator[RendezvousSettings]:
    """A free loopback port; whatever process 0 served is stopped afterwards."""
    yield RendezvousSettings(free_port(), 20)
    if rendezvous._coordinator is not None:
        rendezvous._coordinator.execution_started()
        rendezvous._coordinator = None


def _cluster(process_id: int) -> Cluster:
    return Cluster(process_id, ("127.0.0.1:1", "127.0.0.1:2"))


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_until_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while rendezvous._coordinator is None or rendezvous._coordinator.server is None:
        assert time.monotonic() < deadline, "process 0 never listened"
        time.sleep(0.05)


def test_two_processes_each_with_its_own_directory_drop_exactly_the_abandoned_snapshots(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    dirs = [_store(tmp_path / f"pod-{i}", i) for i in (0, 1)]

    def start(i: int) -> object:
        argv = ["x:flow", "-r", str(dirs[i])]
        return prepare_resume(argv, {}, agree=ResumeAgreement(_cluster(i), meeting))

    zero, _ = _in_thread(lambda: start(0))
    start(1)
    zero.join(20)
    assert not zero.is_alive()
    assert _snapshot_epochs(dirs[0]) == _snapshot_epochs(dirs[1]) == [3]  # epochs >= 4 dropped, 3 kept
    assert (dirs[0] / rendezvous.DECISION_FILE).exists()


def test_a_process_that_died_mid_rendezvous_or_after_it_gets_the_same_epoch_again(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    dirs = [_store(tmp_path / f"pod-{i}", i) for i in (0, 1)]
    zero, decided = _in_thread(lambda: ResumeAgreement(_cluster(0), meeting)(dirs[0], read_progress(dirs[0])))
    _wait_until_listening(meeting.port)
    # Process 1 dies mid-request: connected, half a line sent, gone.
    with socket.create_connection(("127.0.0.1", meeting.port), timeout=20) as conn:
        conn.sendall(b'{"process": 1, "partit')
    with socket.create_connection(("127.0.0.1", meeting.port), timeout=20) as conn:
        pass  # and once without a word
    assert zero.is_alive(), "process 0 decided without partition 1"
    # Restarted, it reports; then it dies again before bytewax starts and asks once more.
    assert ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20) == RESUME
    zero.join(20)
    assert decided == [RESUME]
    assert ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20) == RESUME


def test_a_restarted_process_zero_keeps_the_decision_until_its_bytewax_started(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    dirs = [_store(tmp_path / f"pod-{i}", i) for i in (0, 1)]
    zero, _ = _in_thread(lambda: ResumeAgreement(_cluster(0), meeting)(dirs[0], read_progress(dirs[0])))
    assert ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20) == RESUME
    zero.join(20)
    first = rendezvous._coordinator
    assert first is not None and first.server is not None
    first.server.shutdown()  # process 0 dies before its bytewax started; process 1 waits in timely
    first.server.server_close()

    # The new process 0 answers without process 1 reporting again (it is in timely's start-up, not here).
    assert ResumeAgreement(_cluster(0), meeting)(dirs[0], read_progress(dirs[0])) == RESUME
    assert ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20) == RESUME

    # bytewax built the dataflow: the decision is gone, and nobody is answered any more.
    rendezvous._coordinator.execution_started()
    assert not (dirs[0] / rendezvous.DECISION_FILE).exists()
    with pytest.raises(RecoveryStoreError) as late:
        ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 1)
    assert "\n" not in str(late.value)


def test_process_zero_alone_times_out_in_one_line_naming_the_setting(tmp_path: Path) -> None:
    directory = _store(tmp_path / "pod-0", 0)
    coordinator = Coordinator(directory, read_progress(directory), RendezvousSettings(free_port(), 0.3))
    with pytest.raises(RecoveryStoreError) as waited:
        coordinator.wait(0.3)
    message = str(waited.value)
    assert "\n" not in message
    assert "waited 0.3 s (RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS) for recovery partitions [1] of 2" in message
    assert "--part <process id>" in message


def test_no_process_zero_times_out_in_one_line_naming_the_settings(tmp_path: Path) -> None:
    directory = _store(tmp_path / "pod-1", 1)
    port = free_port()
    with pytest.raises(RecoveryStoreError) as waited:
        ask("127.0.0.1", port, 1, read_progress(directory), 0.5)
    message = str(waited.value)
    assert "\n" not in message
    assert f"process 1 got no resume epoch from process 0 at 127.0.0.1:{port} within 0.5 s" in message
    assert "RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS" in message and "RECOVERY_RENDEZVOUS_PORT" in message


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    directory = _store(tmp_path / "pod-0", 0)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        coordinator = Coordinator(directory, read_progress(directory), RendezvousSettings(port, 1))
        with pytest.raises(RecoveryStoreError, match=f"cannot listen on 127.0.0.1:{port}") as refused:
            coordinator.serve("127.0.0.1")
    assert "set RECOVERY_RENDEZVOUS_PORT to a free port" in str(refused.value)


def test_a_partition_of_another_store_stops_the_asking_process_in_one_line(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    directory = _store(tmp_path / "pod-0", 0)
    _in_thread(lambda: ResumeAgreement(_cluster(0), meeting)(directory, read_progress(directory)))
    with pytest.raises(RecoveryStoreError, match="3-partition store"):
        ask("127.0.0.1", meeting.port, 1, [PartitionProgress(1, 3, (), ())], 20)


def test_a_process_of_another_cluster_on_the_same_port_is_refused_in_one_line(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    # Two local clusters left on the default port: process 1 of one must not take the other's epoch.
    dirs = [_store(tmp_path / f"pod-{i}", i) for i in (0, 1)]
    _in_thread(lambda: ResumeAgreement(_cluster(0), meeting)(dirs[0], read_progress(dirs[0])))
    other = ("127.0.0.1:7", "127.0.0.1:8")
    with pytest.raises(RecoveryStoreError, match="another cluster") as refused:
        ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20, other)
    assert "\n" not in str(refused.value) and "RECOVERY_RENDEZVOUS_PORT" in str(refused.value)
    assert ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20, _cluster(1).addresses) == RESUME


def test_the_source_tells_process_zero_when_bytewax_builds_the_dataflow(
    tmp_path: Path, meeting: RendezvousSettings
) -> None:
    from bytewax.testing import TestingSource

    source = TestingSource([1])
    assert rendezvous.signal_start(source) is source  # no coordinator in this process: unchanged
    dirs = [_store(tmp_path / f"pod-{i}", i) for i in (0, 1)]
    zero, _ = _in_thread(lambda: ResumeAgreement(_cluster(0), meeting)(dirs[0], read_progress(dirs[0])))
    ask("127.0.0.1", meeting.port, 1, read_progress(dirs[1]), 20)
    zero.join(20)
    wrapped = rendezvous.signal_start(source)
    assert wrapped is not source and (dirs[0] / rendezvous.DECISION_FILE).exists()
    assert wrapped.list_parts() == source.list_parts()
    assert not (dirs[0] / rendezvous.DECISION_FILE).exists()


def test_another_service_on_the_port_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    directory = _store(tmp_path / "pod-1", 1)
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]

        def answer_http() -> None:
            conn, _ = other.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        with pytest.raises(
            RecoveryStoreError, match="something other than a resume epoch: set RECOVERY_RENDEZVOUS_PORT"
        ):
            ask("127.0.0.1", port, 1, read_progress(directory), 20)
