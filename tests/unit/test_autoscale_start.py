"""The pods' start-up (connectors/autoscale_start.py): the cluster from a replica count, the
store's layout, the count read from the Kubernetes API, and the restart when it changes."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from connectors.autoscale_replicas import FileReplicas, FixedReplicas, ReplicasError, StatefulSetReplicas, replicas_from
from connectors.autoscale_start import (
    ClusterProcess,
    Plan,
    Settings,
    StartError,
    addresses_for,
    namespace_of,
    ordinal_from,
    plan,
    prepare_store,
)
from connectors.recovery_store.namespace import NAMESPACE_FILE, store_namespace
from connectors.recovery_store.partition_files import read_progress

TEMPLATE = "job-{ordinal}.job:9999"


@pytest.mark.parametrize(
    ("count", "ordinal", "expected_args", "holds"),
    [
        (1, 0, [], True),  # one process: no cluster arguments at all
        (2, 1, ["-a", "job-0.job:9999;job-1.job:9999", "-i", "1"], True),
        (3, 2, ["-a", "job-0.job:9999;job-1.job:9999;job-2.job:9999", "-i", "2"], False),
    ],
)
def test_the_plan_for_a_count(count: int, ordinal: int, expected_args: list[str], holds: bool) -> None:
    cluster = plan(count, ordinal, TEMPLATE, partitions=min(count, 2))
    assert cluster.bytewax_args() == expected_args
    assert cluster.holds_partition is holds


def test_a_count_below_the_stores_partitions_is_refused() -> None:
    with pytest.raises(StartError, match=r"replica count 1 is below BYTEWAX_RECOVERY_PARTS=2.*minReplicas"):
        plan(1, 0, TEMPLATE, partitions=2)


def test_addresses_from_a_list_need_one_per_process() -> None:
    assert addresses_for("a:1;b:2;c:3", 2) == ("a:1", "b:2")
    with pytest.raises(StartError, match="CLUSTER_ADDRESSES lists 2 addresses for 3 processes"):
        addresses_for("a:1;b:2", 3)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BYTEWAX_POD_NAME": "booking-correlation-12"}, 12),
        ({"HOSTNAME": "movie-impressions-0"}, 0),
        ({"CLUSTER_ORDINAL": "3", "BYTEWAX_POD_NAME": "x-1"}, 3),
    ],
)
def test_the_ordinal(env: dict[str, str], expected: int) -> None:
    assert ordinal_from(env) == expected


def test_no_ordinal_is_one_line_naming_the_settings() -> None:
    with pytest.raises(StartError, match=r"BYTEWAX_POD_NAME.*CLUSTER_ORDINAL"):
        ordinal_from({"HOSTNAME": "laptop"})


@pytest.mark.parametrize(
    ("setting", "kind"),
    [("4", FixedReplicas), ("file:/tmp/x.json", FileReplicas)],
)
def test_where_the_count_comes_from(setting: str, kind: type) -> None:
    assert isinstance(replicas_from({"CLUSTER_REPLICAS": setting}), kind)


@pytest.mark.parametrize("setting", ["", "0", "auto"])
def test_a_wrong_count_setting_is_one_line(setting: str) -> None:
    with pytest.raises(ReplicasError, match="CLUSTER_REPLICAS="):
        replicas_from({"CLUSTER_REPLICAS": setting})


def test_statefulset_mode_outside_kubernetes_says_what_to_set() -> None:
    with pytest.raises(ReplicasError, match="CLUSTER_API_URL"):
        replicas_from({"CLUSTER_REPLICAS": "statefulset", "BYTEWAX_STATEFULSET_NAME": "job"})


class FakeApi(BaseHTTPRequestHandler):
    """The one call the start-up makes: GET a StatefulSet; the bearer token must be the current one."""

    replicas = 2
    token = "t1"
    seen: list[str] = []

    def do_GET(self) -> None:
        FakeApi.seen.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {FakeApi.token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(
            {
                "metadata": {
                    "uid": "7f3e9a12-0000-4000-8000-000000000000",
                    "creationTimestamp": "2026-01-02T03:04:05Z",
                },
                "spec": {"replicas": FakeApi.replicas},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_count_and_identity_from_the_statefulset(api: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t1\n")
    source = StatefulSetReplicas(api, "streams", "booking-correlation", token, None)
    assert source.count() == 2
    assert FakeApi.seen[-1] == "/apis/apps/v1/namespaces/streams/statefulsets/booking-correlation"
    FakeApi.replicas, FakeApi.token = 3, "t2"
    token.write_text("t2\n")  # a rotated projected token is read again
    assert source.count() == 3
    identity = source.identity()
    assert identity == "20260102T030405Z-7f3e9a"
    assert namespace_of(identity) == identity


def test_prepare_store_lays_partitions_on_the_first_processes(tmp_path: Path) -> None:
    """Partition i on process i for i < partitions; the others hold none; all share one namespace."""
    dirs = [tmp_path / f"process-{i}" for i in range(3)]
    for i, directory in enumerate(dirs):
        said = prepare_store(directory, Plan(3, i, ("a", "b", "c"), partitions=2), "20260102T030405Z-7f3e9a")
        assert ("no partition here" in said) is (i == 2)
    assert [[(p.index, p.count) for p in read_progress(d)] for d in dirs] == [[(0, 2)], [(1, 2)], []]
    assert {store_namespace(d) for d in dirs} == {"20260102T030405Z-7f3e9a"}
    # Again (a restart): idempotent, the namespace stays.
    prepare_store(dirs[0], Plan(2, 0, ("a", "b"), partitions=2), "other-name")
    assert (dirs[0] / NAMESPACE_FILE).read_text().strip() == "20260102T030405Z-7f3e9a"


def test_a_process_past_the_store_holding_partitions_is_refused(tmp_path: Path) -> None:
    """Two copies of a partition would diverge: bytewax writes to one of them."""
    prepare_store(tmp_path / "p", Plan(2, 1, ("a", "b"), partitions=2), None)
    with pytest.raises(StartError, match=r"part-1\.sqlite3.*belong on processes 0\.\.0"):
        prepare_store(tmp_path / "p", Plan(2, 1, ("a", "b"), partitions=1), None)


# The restart loop, with a stand-in for `python -m bytewax.run` that records its arguments.
RECORDER = (
    "import sys, time; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n'); time.sleep(float(sys.argv[2]))"
)


def replicas_file(path: Path, count: int) -> None:
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"replicas": count, "id": "20260102T030405Z-abcdef"}))
    scratch.replace(path)


def test_a_count_change_restarts_the_child_with_the_new_cluster(tmp_path: Path) -> None:
    record, counts = tmp_path / "starts.txt", tmp_path / "replicas.json"
    replicas_file(counts, 2)
    settings = Settings("60", [], None, 2, "h{ordinal}:1", 1, poll_s=0.05)  # target "60": the stand-in sleeps 60 s
    process = ClusterProcess(settings, FileReplicas(counts), {}, [sys.executable, "-c", RECORDER, str(record)])
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(process.run()))
    thread.start()
    try:
        wait_until(lambda: record.exists() and len(record.read_text().splitlines()) == 1)
        replicas_file(counts, 3)
        wait_until(lambda: len(record.read_text().splitlines()) == 2)
    finally:
        process.terminate()
        thread.join(10)
    assert record.read_text().splitlines() == ["60 -a h0:1;h1:1 -i 1", "60 -a h0:1;h1:1;h2:1 -i 1"]
    assert done == [-15]  # SIGTERM: the pod went away, and so did the child


def test_a_child_that_exits_ends_the_process_with_its_code(tmp_path: Path) -> None:
    """Kubernetes restarts the pod, as before; the count is unchanged."""
    record, counts = tmp_path / "starts.txt", tmp_path / "replicas.json"
    replicas_file(counts, 2)
    settings = Settings("0", [], None, 2, "h{ordinal}:1", 0, poll_s=0.05)
    failing = [sys.executable, "-c", RECORDER + "; sys.exit(3)", str(record)]
    assert ClusterProcess(settings, FileReplicas(counts), {}, failing).run() == 3


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_cluster_process_past_the_store_starts_with_an_empty_directory(tmp_path: Path) -> None:
    """connectors/recovery_store/resume.prepare_resume: one of a cluster (it has a way to agree with
    the others) may hold no partition; alone, an empty directory is still a mistake."""
    from connectors.recovery_store.errors import RecoveryStoreError
    from connectors.recovery_store.resume import prepare_resume

    empty = tmp_path / "process-2"
    empty.mkdir()
    argv = ["-r", str(empty)]
    resume = prepare_resume(argv, {}, agree=lambda directory, progress: pytest.fail("asked to agree"))
    assert resume.directory == empty and resume.fresh is False  # the processes holding the store judge that
    with pytest.raises(RecoveryStoreError, match="holds no recovery partitions"):
        prepare_resume(argv, {})


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("BYTEWAX_RECOVERY_PARTS", "two", r"^BYTEWAX_RECOVERY_PARTS='two' is not a whole number: set it to e\.g\. 1$"),
        ("BYTEWAX_RECOVERY_PARTS", "0", r"^BYTEWAX_RECOVERY_PARTS=0 is below the minimum 1"),
        ("CLUSTER_REPLICAS_POLL_SECONDS", "soon", r"^CLUSTER_REPLICAS_POLL_SECONDS='soon' is not a number"),
    ],
)
def test_a_wrong_number_is_one_line_naming_the_setting(setting: str, value: str, says: str) -> None:
    environ = {"CLUSTER_ADDRESSES": "job-{ordinal}.job:9999", "CLUSTER_ORDINAL": "0", setting: value}
    with pytest.raises(StartError, match=says):
        Settings.from_env(["dataflows.booking_correlation:flow", "-r", "/tmp/r"], environ)
