"""Secured brokers for the tests: one per security mode, shared by the session.

A broker costs about 10 s to start, so all three are started together at the first use
of any (they boot side by side) and stopped at the end of the session. Their
certificates and passwords are made at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devstack.kafka import KafkaBroker
from devstack.processes import free_port
from tests.support.jobs import ROOT

SECURED_MODES = ("sasl_ssl_scram", "mtls", "oauthbearer")


@pytest.fixture(scope="session")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], KafkaBroker]]:
    """`secured_broker(mode)`: the session's broker whose client listener is secured by `mode`."""
    started: dict[str, KafkaBroker] = {}

    def get(mode: str) -> KafkaBroker:
        if not started:
            for each in SECURED_MODES:
                data = tmp_path_factory.mktemp(f"kafka-{each}")
                started[each] = KafkaBroker(free_port(), free_port(), data, ROOT / ".cache", security=each)
                started[each].start(wait=False)
            for broker in started.values():
                broker.wait_ready(timeout=120)
        return started[mode]

    yield get
    for broker in started.values():
        broker.stop(grace=0)  # their data is thrown away: no controlled shutdown to wait for


@pytest.fixture(params=SECURED_MODES)
def secured_kafka(request: pytest.FixtureRequest, secured_broker: Callable[[str], KafkaBroker]) -> KafkaBroker:
    return secured_broker(request.param)
