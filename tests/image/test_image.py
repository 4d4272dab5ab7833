"""The job image, built here with buildah, runs both jobs as uid 10001 against the local stack.

`make test-image` runs this (it needs root, buildah and a few minutes for a first base
build); `make test` deselects it (marker `image`). The container shares the host's network (loopback only)
and gets the recovery directory as a bind mount; everything else it writes must be under
/tmp: its writable layer is compared before and after the runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from devstack.s3 import LOCAL_CREDENTIALS
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.jobs import ROOT, bytewax_argv
from tests.support.oracles import expected_rows, raw_of
from tests.support.runs import check_booking_outputs

IMAGE = "localhost/waxstreams:test"
RECOVERY = "/var/bytewax/recovery"
DEV_ONLY = ("pytest", "hypothesis", "moto", "ruff", "mypy", "kubernetes-validate")


@pytest.fixture(scope="module")
def image() -> str:
    subprocess.run([str(ROOT / "image" / "build.sh"), IMAGE], cwd=ROOT, check=True, timeout=1500)
    return IMAGE


class Container:
    """A working container of the image; commands run in it with chroot isolation and host networking."""

    def __init__(self, image: str) -> None:
        self.name = f"waxstreams-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["buildah", "from", "--quiet", "--name", self.name, image], check=True, capture_output=True)

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        volumes: dict[Path, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess:
        cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for host, inside in (volumes or {}).items():
            cmd += ["-v", f"{host}:{inside}"]
        for name, value in (env or {}).items():
            cmd += ["-e", f"{name}={value}"]
        return subprocess.run(
            [*cmd, self.name, "--", *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def layer_files(self) -> dict[str, tuple[int, int]]:
        """Every file in the container's own layer (what it changed), with mtime and size."""
        merged = Path(
            subprocess.run(["buildah", "mount", self.name], check=True, capture_output=True, text=True).stdout.strip()
        )
        layer = merged.parent / "diff" if (merged.parent / "diff").is_dir() else merged
        found = {}
        for path in layer.rglob("*"):
            if path.is_file() or path.is_symlink():
                stat = path.lstat()
                found[str(path.relative_to(layer))] = (stat.st_mtime_ns, stat.st_size)
        return found

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, check=False)


@pytest.fixture
def container(image: str):
    box = Container(image)
    yield box
    box.remove()


def recovery_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    os.chown(path, 10001, 10001)  # the image's user owns its volume, as fsGroup does on Kubernetes
    return path


def job(container: Container, flow: str, env: dict[str, str], recovery: Path) -> subprocess.CompletedProcess:
    volumes = {recovery: RECOVERY}
    init = container.run("python", "-m", "connectors.recovery_store", "init", RECOVERY, "--partitions", "1",
                         env=env, volumes=volumes)  # fmt: skip
    assert init.returncode == 0, init.stderr[-2000:]
    argv = bytewax_argv(flow, recovery=Path(RECOVERY))[1:]  # the image's own python, not this one
    return container.run("python", *argv, env=env, volumes=volumes)


def test_both_jobs_run_from_the_image_as_uid_10001_writing_only_tmp_and_recovery(
    container: Container, kafka, s3, tmp_path: Path
) -> None:
    assert shutil.which("buildah")
    who = container.run("id", "-u")
    assert who.stdout.strip() == "10001", who.stderr
    installed = container.run("pip", "list", "--format=freeze").stdout.lower()
    assert "bytewax==0.21.1" in installed and "confluent-kafka==2.16.1" in installed
    assert not [p for p in DEV_ONLY if f"\n{p}==" in f"\n{installed}"], installed
    version = container.run("python", "-c", "import sys; print(sys.version_info[:2])").stdout.strip()
    assert version == "(3, 11)"
    # The native Kafka reader is in the image exactly when `make install` built its wheel here (image/build.sh).
    shipped = any((ROOT / ".cache" / "native-wheel").glob("*.whl"))
    why_not = container.run(
        "python", "-c", "from connectors.transports import kafka_native as k; print(k.unavailable())"
    )
    assert (why_not.stdout.strip() == "None") == shipped, why_not.stdout + why_not.stderr
    before = container.layer_files()

    run_id = uuid.uuid4().hex[:8]
    topics = {"IMPRESSIONS_TOPIC": f"img-in-{run_id}", "DEAD_LETTER_TOPIC": f"img-dead-{run_id}", "LATE_TOPIC": f"img-late-{run_id}"}  # fmt: skip
    make_topics(kafka, *topics.values())
    s3.create_bucket(f"img-{run_id}")
    events = list(generate(TrafficShape(count=3000, movies=6, users=30, step_ms=2400, invalid_fraction=0.02, seed=12)))
    produce(iter(events), kafka.bootstrap, topics["IMPRESSIONS_TOPIC"])
    env = {
        **LOCAL_CREDENTIALS,
        **topics,
        "KAFKA_BROKERS": kafka.bootstrap,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"img-{run_id}",
        "S3_PREFIX": "impressions",
        "BOUNDED": "true",
        "KAFKA_READER": "auto",  # the native reader if shipped, else confluent-kafka and one line saying why
    }
    result = job(container, "dataflows.movie_impressions:flow", env, recovery_dir(tmp_path, "impressions"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("KAFKA_READER=auto: reading Kafka with confluent-kafka" in result.stderr) != shipped, result.stderr[-3000:]
    rows = read_s3_rows(s3, f"img-{run_id}", "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))
    dead = read_topic(kafka.bootstrap, topics["DEAD_LETTER_TOPIC"])
    assert Counter(raw_of(json.loads(v)) for _, v in dead) == Counter(e.value for e in events if e.kind == "invalid")

    booking_env = {
        "CREATED_TOPIC": f"img-created-{run_id}",
        "EVENTS_TOPIC": f"img-events-{run_id}",
        "ALERTS_TOPIC": f"img-alerts-{run_id}",
        "UNMATCHED_TOPIC": f"img-unmatched-{run_id}",
        "DEAD_LETTER_TOPIC": f"img-bdead-{run_id}",
    }
    make_topics(kafka, *booking_env.values())
    messages = generate_bookings(BookingTraffic(count=600, step_ms=500, invalid_fraction=0.02, seed=13))
    produce_messages(messages_for(messages, booking_env["CREATED_TOPIC"], booking_env["EVENTS_TOPIC"]), kafka.bootstrap)
    booking_env |= {"KAFKA_BROKERS": kafka.bootstrap, "BOOKING_TIMEOUT_SECONDS": "300", "BOUNDED": "true"}
    result = job(container, "dataflows.booking_correlation:flow", booking_env, recovery_dir(tmp_path, "bookings"))
    assert result.returncode == 0, result.stderr[-3000:]
    check_booking_outputs(kafka, booking_env, messages, allow_identical_repeats=False)

    after = container.layer_files()
    changed = {path for path, stamp in after.items() if before.get(path) != stamp}
    assert "tmp/dataflow.json" in changed  # the check sees what the jobs write
    outside = sorted(p for p in changed if not p.startswith("tmp/"))
    assert not outside, f"the jobs wrote outside /tmp and the recovery volume: {outside[:20]}"
    assert any((tmp_path / "impressions").glob("*.sqlite3")) and any((tmp_path / "bookings").glob("*.sqlite3"))
