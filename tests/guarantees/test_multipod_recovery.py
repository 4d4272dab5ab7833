"""One recovery volume per pod: every process of the cluster SIGKILLed together, again and
again while traffic flows, and the output stays exact (connectors/rendezvous.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.e2e.test_booking_correlation import output_env
from tests.support.data import make_topics
from tests.support.jobs import FLOWS, cluster_addresses, wait_for
from tests.support.runs import BOUND_S, PodCluster, check_booking_outputs, traffic

# How each crash comes, and whether the restart waits past the lateness bound.
Crashes = list[tuple[str, bool]]
IMPRESSIONS_CRASHES: Crashes = [
    ("between_snapshot_and_frontier", False),
    ("after_snapshot", True),
    ("between_snapshot_and_frontier", True),
]
BOOKING_CRASHES: Crashes = [("after_snapshot", True), ("between_snapshot_and_frontier", False)]


def crash_repeatedly(cluster: PodCluster, feed: Callable[[], None], crashes: Crashes) -> int:
    """Starts the cluster and SIGKILLs all its processes together, as `crashes` says, while
    `feed` produces: right after each process stored a snapshot of this execution, or at an
    instant between an epoch's snapshots and its frontier (which leaves abandoned snapshots).
    Every start must drop exactly the snapshots the crash before it abandoned; returns how
    many the last crash left, for the next start."""
    feeder = threading.Thread(target=feed)
    feeder.start()
    abandoned = [0]
    try:
        for how, downtime in crashes:
            before = cluster.newest_snapshot_epoch()
            cluster.start()
            for job in cluster.jobs:  # this execution runs: it stored a snapshot in every process's directory
                wait_for(lambda e=before: cluster.every_directory_has_a_snapshot_past(e), 90, "a snapshot", job)
            assert cluster.dropped_snapshots() == abandoned[-1]
            if how == "after_snapshot":
                cluster.kill()
            else:
                cluster.kill_between_snapshot_and_frontier(90)
            abandoned.append(cluster.abandoned_snapshots())
            if downtime:
                time.sleep(BOUND_S + 1)  # down longer than the lateness bound
    finally:
        feeder.join()
    # Each process sees only its own partition; without the rendezvous none of them could
    # find these, and a later resume could load them (connectors/recovery_store/resume.py).
    assert sum(abandoned) > 0, "no crash left abandoned snapshots: nothing was tested"
    return abandoned[-1]


def test_impressions_into_s3_stay_exact_through_kills_of_every_pod(new_run, pod_cluster) -> None:
    run = new_run()
    events = traffic(12_000, seed=41)
    run.produce(events[:3_000])
    cluster = pod_cluster(FLOWS["movie-impressions"], run.env)
    abandoned = crash_repeatedly(cluster, lambda: run.produce(events[3_000:], 500.0), IMPRESSIONS_CRASHES)
    cluster.finish()
    assert cluster.dropped_snapshots() == abandoned
    run.assert_exact()


def test_booking_alerts_into_kafka_stay_exact_through_kills_of_every_pod(kafka, pod_cluster) -> None:
    """Then the last start loses process 1 after the rendezvous, before bytewax starts (a
    wrong topic setting) while process 0 waits in bytewax's start-up: fixed and restarted,
    process 1 is answered again and the run completes."""
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-m{suffix}", "EVENTS_TOPIC": f"events-m{suffix}"}
    make_topics(kafka, *topics.values(), partitions=2)
    env = {**topics, **output_env(kafka, f"multipod-{suffix}"), "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S)}
    messages = generate_bookings(BookingTraffic(count=4_000, step_ms=500, seed=17, invalid_fraction=0.01))
    records = list(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]))
    split = len(records) // 4
    produce_messages(records[:split], kafka.bootstrap)
    cluster = pod_cluster(FLOWS["booking-correlation"], env)
    abandoned = crash_repeatedly(
        cluster, lambda: produce_messages(records[split:], kafka.bootstrap, 400.0), BOOKING_CRASHES
    )

    cluster.starts += 1
    cluster.addresses = cluster_addresses(2)
    zero = cluster.start_process(0, BOUNDED="true")
    stopped = cluster.start_process(1, "-first", BOUNDED="true", ALERTS_TOPIC=f"no-such-topic-{suffix}")
    assert stopped.wait(90) != 0
    assert f"no-such-topic-{suffix}" in stopped.output() and "the cluster resumes from epoch" in stopped.output()
    assert zero.process.poll() is None, "process 0 gave up while process 1 was away"
    again = cluster.start_process(1, "-again", BOUNDED="true")
    assert again.wait(120) == 0, again.output()[-3000:]
    assert zero.wait(60) == 0, zero.output()[-3000:]
    assert cluster.dropped_snapshots() == abandoned  # each dropped once, by the process that holds it
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)
