"""Rescaling while traffic flows: 2 -> 3 -> 2 processes through the pods' start-up
(connectors/autoscale_start.py), each process with its own recovery directory, the store's
partitions on processes 0 and 1 only, SIGKILLs of every process in between; the output
equals the oracle's."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from devstack.autoscale import LocalCluster
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.e2e.test_booking_correlation import output_env
from tests.support.data import make_topics
from tests.support.jobs import FLOWS, wait_for
from tests.support.runs import BOUND_S, check_booking_outputs, newest_snapshot_epoch, traffic


def stored_epoch(cluster: LocalCluster) -> int:
    """The newest epoch both partition-holding processes stored a snapshot of."""
    return min(newest_snapshot_epoch(cluster.directory(i)) for i in range(cluster.minimum))


def wait_for_progress(cluster: LocalCluster, what: str) -> None:
    """This execution stored a snapshot on every volume that holds the store."""
    before = stored_epoch(cluster)
    wait_for(lambda: stored_epoch(cluster) > before, 90, f"a snapshot after {what}\n{cluster.logs()[-4000:]}")


def rescale_with_kills(cluster: LocalCluster, feed: Callable[[], None]) -> float:
    """2, killed, 2 again; live to 3, killed, 3 again; live to 2; returns when the 2 -> 3 was written."""
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        cluster.scale_to(2)
        wait_for_progress(cluster, "the first start")
        cluster.kill()
        cluster.ensure_running()  # as the kubelet restarts the pods
        wait_for_progress(cluster, "a SIGKILL of every process")
        up_at = time.time()
        cluster.scale_to(3)  # processes 0 and 1 see the count change and restart with it; 2 starts
        wait_for_progress(cluster, "the rescale to 3")
        cluster.kill()
        cluster.ensure_running()
        wait_for_progress(cluster, "a SIGKILL of every process at 3")
        cluster.scale_to(2)  # process 2 is stopped, 0 and 1 restart with 2
        wait_for_progress(cluster, "the rescale to 2")
    finally:
        feeder.join()
    logs = cluster.logs()
    assert "starting process 2 of 3" in logs and "no partition here" in logs
    assert "the replica count changed 2 -> 3" in logs and "the replica count changed 3 -> 2" in logs
    return up_at


def dump_s3(run, path: Path) -> None:
    """Every object and manifest with its time, for the post-mortem of a failure."""
    client = run.s3.client()
    lines = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=run.bucket):
        for entry in page.get("Contents", []):
            lines.append(f"{entry['LastModified'].isoformat()} {entry['Key']}")
            if entry["Key"].endswith(".json"):
                lines.append("    " + client.get_object(Bucket=run.bucket, Key=entry["Key"])["Body"].read().decode())
    path.write_text("\n".join(lines))


def finish(cluster: LocalCluster) -> None:
    """The last start runs bounded to the end of the input, at 2 processes."""
    cluster.kill()
    cluster.common_env["BOUNDED"] = "true"
    cluster.ensure_running()
    codes = cluster.wait(180)
    assert codes == [0, 0], cluster.logs()[-6000:]


def test_impressions_into_s3_stay_exact_through_2_3_2_with_kills(new_run, local_cluster) -> None:
    run = new_run()
    events = traffic(12_000, seed=43)
    run.produce(events[:2_000])
    cluster = local_cluster(FLOWS["movie-impressions"], run.env, 2, 3)
    rescale_with_kills(cluster, lambda: run.produce(events[2_000:], 200.0))
    finish(cluster)
    try:
        run.assert_exact()
    except AssertionError:
        dump_s3(run, cluster.workdir / "s3-listing.txt")
        raise


def test_booking_alerts_into_kafka_stay_exact_through_2_3_2_with_kills(kafka, local_cluster) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-r{suffix}", "EVENTS_TOPIC": f"events-r{suffix}"}
    make_topics(kafka, *topics.values(), partitions=3)
    env = {**topics, **output_env(kafka, f"rescale-{suffix}"), "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S)}
    env["CONSUMER_GROUP"] = f"rescale-{suffix}"
    messages = generate_bookings(BookingTraffic(count=5_000, step_ms=500, seed=23, invalid_fraction=0.01))
    records = list(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]))
    split = len(records) // 5
    produce_messages(records[:split], kafka.bootstrap)
    cluster = local_cluster(FLOWS["booking-correlation"], env, 2, 3)
    watch = OutputWatch(kafka.bootstrap, env["ALERTS_TOPIC"])
    try:
        up_at = rescale_with_kills(cluster, lambda: produce_messages(records[split:], kafka.bootstrap, 160.0))
    finally:
        watch.close()
    finish(cluster)
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)

    noticed = max(first_logged(cluster, "the replica count changed 2 -> 3").values())
    started = first_logged(cluster, " of 3 (")  # a process's new child starts once its old one ended
    assert sorted(started) == [0, 1, 2], started
    restarted = max(started.values())
    first = watch.first_growth_after(restarted)
    print(
        f"\nrescale 2 -> 3: count written -> noticed {noticed - up_at:.2f} s; noticed -> every new process "
        f"started {restarted - noticed:.2f} s; -> first alert of the new cluster {first - restarted:.2f} s; "
        f"the count's change to new output {first - up_at:.2f} s"
    )


def first_logged(cluster: LocalCluster, line: str) -> dict[int, float]:
    """Per process ordinal, when it first logged `line`."""
    times: dict[int, float] = {}
    for log in cluster.workdir.glob("process-*-start-*.log"):
        ordinal = int(log.name.split("-")[1])
        for text in log.read_text(errors="replace").splitlines():
            if line in text:
                at = datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
                times[ordinal] = min(times.get(ordinal, at), at)
    return times


class OutputWatch:
    """Samples how many records a topic holds (the sum of its end offsets), every 50 ms, in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{uuid.uuid4()}"})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in partitions]
        self.seen: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.05):
            ends = sum(self.consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in self.partitions)
            self.seen.append((time.time(), ends))

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.consumer.close()

    def first_growth_after(self, instant: float) -> float:
        """When the topic first held more records than it did at `instant`."""
        before = max((n for t, n in self.seen if t <= instant), default=0)
        return next(t for t, n in self.seen if t > instant and n > before)
