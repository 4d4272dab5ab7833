"""Distributed mode on this machine: processes on loopback as pods run them, rescaling, metrics, lag."""

from __future__ import annotations

import math
import re
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from devstack.processes import free_port
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.e2e.test_booking_correlation import output_env
from tests.support.data import make_topics, read_partitions, read_s3_rows
from tests.support.jobs import FLOWS, failed_processes, init_recovery, run_cluster, wait_for
from tests.support.oracles import WINDOW_MS
from tests.support.runs import BOUND_S, check_booking_outputs, traffic


def test_movie_impressions_as_two_processes_is_exact_and_lag_is_visible(kafka, new_run, tmp_path: Path) -> None:
    run = new_run()
    run.produce(traffic(15_000, seed=31))
    recovery = init_recovery(tmp_path / "cluster-recovery", partitions=2)
    results = run_cluster(FLOWS["movie-impressions"], {**run.env, "BOUNDED": "true"}, processes=2, recovery=recovery)
    assert not failed_processes(results), failed_processes(results)
    run.assert_exact()

    # The offsets are also committed to the consumer group, for standard lag tools.
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    topic = run.env["IMPRESSIONS_TOPIC"]
    [future] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(run.env["CONSUMER_GROUP"])]).values()
    committed = {tp.partition: tp.offset for tp in future.result().topic_partitions if tp.topic == topic}
    ends = {p: admin_end_offset(kafka.bootstrap, topic, p) for p in range(3)}
    assert committed == ends, [line for r in results for line in r.stderr.splitlines() if "commit" in line]


def admin_end_offset(bootstrap: str, topic: str, partition: int) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        consumer.close()


def test_booking_correlation_as_two_processes_is_exact(kafka, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-c{suffix}", "EVENTS_TOPIC": f"events-c{suffix}"}
    make_topics(kafka, *topics.values(), partitions=2)
    messages = generate_bookings(BookingTraffic(count=3000, step_ms=300, seed=13, invalid_fraction=0.01))
    produce_messages(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]), kafka.bootstrap)
    env = {**topics, **output_env(kafka, f"cluster-{suffix}"), "BOUNDED": "true"}
    results = run_cluster(
        FLOWS["booking-correlation"], env, processes=2, recovery=init_recovery(tmp_path / "recovery", partitions=2)
    )
    assert not failed_processes(results), failed_processes(results)
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)


def test_rescale_from_one_worker_to_two_processes_keeps_the_output_exact(new_run, tmp_path: Path) -> None:
    run = new_run()
    events = traffic(20_000, seed=32)
    run.produce(events[:10_000])
    job = run.start(workers=1)
    wait_for(lambda: len(run.data_objects()) > 0, 60, "first objects", job)
    time.sleep(1.5)
    job.kill()
    run.produce(events[10_000:])
    results = run_cluster(
        FLOWS["movie-impressions"], {**run.env, "BOUNDED": "true"}, processes=2, recovery=run.recovery
    )
    assert not failed_processes(results), failed_processes(results)
    run.assert_exact()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(waxstreams_\S+) (\S+)$", text, re.M)}


def test_metrics_match_the_oracle_during_a_run(new_run) -> None:
    run = new_run()
    events = traffic(8_000, seed=33)
    run.produce(events)
    port = free_port()
    job = run.start(METRICS_PORT=str(port))
    counted = 'waxstreams_events_total{job="movie_impressions",outcome="%s"}'
    wait_for(
        lambda: (
            sum(scrape(port).get(counted % o, 0) for o in ("valid", "invalid", "late")) == len(events)
            if _up(port)
            else False
        ),
        60,
        "every event counted",
        job,
    )
    metrics = scrape(port)
    for outcome in ("valid", "invalid", "late"):
        assert metrics[counted % outcome] == sum(e.kind == outcome for e in events)
    wait_for(lambda: scrape(port).get("waxstreams_s3_objects_written_total", 0) > 0, 30, "objects", job)
    # Once the closed windows are written, the sink's row count is what S3 holds.
    wait_for(
        lambda: scrape(port)["waxstreams_s3_rows_written_total"] == read_s3_rows(run.s3, run.bucket, run.prefix).height,
        30,
        "the rows metric to match S3",
        job,
    )
    # The watermark: the slowest partition's newest event time less the disorder bound.
    valid = {e.value: e.timestamp for e in events if e.kind == "valid"}
    partitions = read_partitions(run.kafka.bootstrap, run.env["IMPRESSIONS_TOPIC"]).values()
    watermark_ms = min(max(valid.get(v, 0) for _, v in records) for records in partitions) - BOUND_S * 1000

    def keys_held_by_open_windows() -> bool:
        metrics = scrape(port)
        lag_s = metrics['waxstreams_watermark_lag_seconds{job="movie_impressions"}']
        if math.isnan(lag_s):  # windows close before the first epoch commits a watermark
            return False
        committed_ms = (time.time() - lag_s) * 1000
        # Committed at epoch ends from earlier epochs' items, so it may trail, never lead.
        assert min(valid.values()) < committed_ms <= watermark_ms + 10_000
        # Not bounded: the windows past the committed watermark are open; their movies hold state.
        open_movies = {
            e.movie_id
            for e in events
            if e.kind == "valid"
            and e.timestamp - e.timestamp % WINDOW_MS + WINDOW_MS > committed_ms - committed_ms % WINDOW_MS
        }
        return metrics['waxstreams_keys_in_state{job="movie_impressions"}'] == len(open_movies)

    # A key closes its windows when it next wakes after the watermark passed them, at
    # most a recheck after the commit, so the gauge catches up with the watermark.
    wait_for(keys_held_by_open_windows, 30, "the keys gauge to match the open windows", job)
    job.kill()


def _up(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False
