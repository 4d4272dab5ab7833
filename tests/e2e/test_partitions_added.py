"""Partitions added to the input topic while the job runs are reported with the fix, and
read after the restart it asks for."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewPartitions

from producers.kafka_producer import produce_messages
from tests.support.jobs import wait_for
from tests.support.runs import traffic


def test_partitions_added_while_running_are_reported_then_read_after_a_restart(new_run) -> None:
    run = new_run()
    events = traffic(6_000, seed=41)
    run.produce(events[:3_000])
    job = run.start(KAFKA_PARTITION_CHECK_SECONDS="1")
    try:
        wait_for(lambda: run.data_objects(), 60, "first objects", job)
        topic = run.env["IMPRESSIONS_TOPIC"]
        admin = AdminClient({"bootstrap.servers": run.kafka.bootstrap})
        [future] = admin.create_partitions([NewPartitions(topic, 5)]).values()
        future.result(timeout=30)
        wait_for(
            lambda: f"Kafka topic {topic} now has 5 partitions, this run reads 3: restart the job" in job.output(),
            30,
            "the added partitions reported",
            job,
        )
    finally:
        job.kill()
    # Records keyed to the new partitions too; the restart reads all five.
    produce_messages(((topic, e.key, e.value) for e in events[3_000:]), run.kafka.bootstrap)
    run.produced += events[3_000:]
    run.finish()
    run.assert_exact()
