"""The local autoscaler (`make autoscale`) under a load ramp: up while busy, down once quiet, output exact.

Its signal is the processes' CPU, so it needs a machine whose other work does not drown a quiet
job's few percent: it runs in `make soak`, not in `make test` (the decision rule is tested as a
table in tests/unit, the restart path by tests/guarantees/test_rescale.py)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime

from connectors.autoscale_policy import ScalingRule
from devstack.autoscale import Autoscaler
from producers.bookings import BookingTraffic, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from tests.e2e.test_booking_correlation import output_env
from tests.support.data import make_topics
from tests.support.jobs import FLOWS, wait_for
from tests.support.runs import BOUND_S, check_booking_outputs


def test_the_autoscaler_follows_a_load_ramp_up_and_back_down(kafka, local_cluster) -> None:
    """devstack/autoscale.py's supervisor, with KDA's rule on 2-second periods: a ramp of
    bookings drives the CPU up (1 -> 2 processes), the quiet after it brings it down (2 -> 1);
    every output still equals the oracle's."""
    suffix = uuid.uuid4().hex[:8]
    topics = {"CREATED_TOPIC": f"created-a{suffix}", "EVENTS_TOPIC": f"events-a{suffix}"}
    make_topics(kafka, *topics.values(), partitions=2)
    env = {**topics, **output_env(kafka, f"autoscale-{suffix}"), "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S)}
    env["CONSUMER_GROUP"] = f"autoscale-{suffix}"
    # Two records per booking: 36,000 bookings are a 24-s ramp at 3,000 records/s.
    messages = generate_bookings(BookingTraffic(count=36_000, step_ms=200, seed=29, invalid_fraction=0.01))
    records = list(messages_for(messages, topics["CREATED_TOPIC"], topics["EVENTS_TOPIC"]))
    cluster = local_cluster(FLOWS["booking-correlation"], env, 1, 2)
    cluster.snapshot_s = 10  # a deployment's interval (k8s/), not the tests' 1 s
    # Thresholds for a shared 2-core machine: a busy process may get half a CPU, and an idle
    # cluster holding keyed state uses 5-15 % of one (the engine's loop, the snapshots).
    rule = ScalingRule(period_s=2.0, up_threshold=0.35, up_periods=3, down_threshold=0.2, down_periods=5)
    scaler = Autoscaler(cluster, rule, settle_s=5.0)
    cluster.scale_to(1)
    stop = threading.Event()
    supervisor = threading.Thread(target=scaler.run, args=(stop,))
    supervisor.start()
    try:
        # The ramp: a trickle, then a sustained 3,000 records/s; then nothing.
        produce_messages(records[:500], kafka.bootstrap, 100.0)
        produce_messages(records[500:], kafka.bootstrap, 3_000.0)
        ramp_ended = time.time()
        wait_for(lambda: len(scaler.decisions) >= 2, 300, "a scale up and down")
    finally:
        stop.set()
        supervisor.join()
        print("\n" + "\n".join(autoscale_log(scaler)))
    assert [(a, b) for _, a, b, _ in scaler.decisions[:2]] == [(1, 2), (2, 1)]
    up_at, down_at = scaler.decisions[0][0], scaler.decisions[1][0]
    assert up_at < ramp_ended <= down_at, "scaled up after the ramp, or down during it"
    cluster.kill()
    cluster.common_env["BOUNDED"] = "true"
    cluster.ensure_running()
    assert cluster.wait(120) == [0], cluster.logs()[-6000:]
    check_booking_outputs(kafka, env, messages, allow_identical_repeats=False)


def autoscale_log(scaler: Autoscaler) -> list[str]:
    """The supervisor's view, one line per second: time, processes, CPU; and its decisions."""
    lines, last = [], 0.0
    for t, count, cpu in scaler.history:
        if t - last >= 1.0:
            lines.append(
                f"{datetime.fromtimestamp(t).astimezone():%H:%M:%S} {count} processes, CPU {cpu if cpu is None else f'{cpu:.0%}'}"
            )
            last = t
    return lines + [
        f"{datetime.fromtimestamp(t).astimezone():%H:%M:%S} {a} -> {b}: {why}" for t, a, b, why in scaler.decisions
    ]
