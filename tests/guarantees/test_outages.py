"""Kafka and S3 outages mid-run: the job rides them out (or fails loudly) and the output is exact."""

from __future__ import annotations

import re
import threading
import time

from devstack.kafka import KafkaBroker
from tests.support.faults import FlakyProxy
from tests.support.jobs import wait_for
from tests.support.runs import traffic

OUTAGE_S = 30


def test_kafka_broker_down_for_30s(own_broker: KafkaBroker, new_run) -> None:
    run = new_run(broker=own_broker)
    # Every partition is silent through the outage; on a loaded machine detection plus outage can
    # pass the default idle timeout (60 s), and idleness lets the watermark close windows that a
    # partition behind still feeds (late by design). This test is about riding out the broker.
    run.env["IDLE_TIMEOUT_SECONDS"] = "600"
    events = traffic(20_000, seed=21)
    run.produce(events[:8_000])
    job = run.start()
    wait_for(lambda: len(run.data_objects()) > 0, 60, "first objects", job)

    own_broker.stop()
    # The source reports consumer errors; librdkafka logs lost connections itself.
    seen = re.compile(r"Kafka consumer error|Connect to .* failed|Connection refused|brokers are down")
    wait_for(lambda: seen.search(job.output()) is not None, 30, "the job to see the broker gone", job)
    time.sleep(OUTAGE_S)  # the outage itself: its length is the point of the test
    own_broker.start()

    run.produce(events[8_000:])
    objects_before = len(run.data_objects())
    wait_for(lambda: len(run.data_objects()) > objects_before, 90, "output after the outage", job)
    assert job.process.poll() is None, "the job did not ride out the broker outage"
    job.kill()
    run.finish()
    run.assert_exact()


def test_s3_refusing_connections_for_30s_is_retried(s3, new_run) -> None:
    proxy = FlakyProxy(s3.port)
    run = new_run(proxy.url)
    events = traffic(20_000, seed=22)
    try:
        run.produce(events[:8_000])
        job = run.start()
        wait_for(lambda: len(run.data_objects()) > 0, 60, "first objects", job)
        proxy.set_mode("refuse")
        feeder = threading.Thread(target=run.produce, args=(events[8_000:], 2000.0))
        feeder.start()  # windows keep closing while S3 is away
        time.sleep(OUTAGE_S)
        feeder.join()
        assert job.process.poll() is None, "the job gave up during a 30 s outage"
        proxy.set_mode("pass")
        assert "; retrying in" in job.output(), "no S3 retry was logged during the outage"
        objects_before = len(run.data_objects())
        wait_for(lambda: len(run.data_objects()) > objects_before, 60, "writes after the outage", job)
        job.kill()
        run.finish()
    finally:
        proxy.close()
    run.assert_exact()


def test_s3_outage_longer_than_the_retry_budget_fails_loudly_and_a_restart_recovers(s3, new_run) -> None:
    proxy = FlakyProxy(s3.port)
    run = new_run(proxy.url)
    events = traffic(12_000, seed=23)
    try:
        run.produce(events[:5_000])
        job = run.start(S3_RETRY_SECONDS="3")
        wait_for(lambda: len(run.data_objects()) > 0, 60, "first objects", job)
        proxy.set_mode("refuse")
        run.produce(events[5_000:])
        assert job.wait(timeout=60) != 0
        assert "still failing after 3s" in job.output() and "check S3_ENDPOINT_URL" in job.output()
        proxy.set_mode("pass")
        run.finish()
    finally:
        proxy.close()
    run.assert_exact()
