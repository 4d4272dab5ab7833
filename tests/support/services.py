"""Session services on free loopback ports: a real Kafka broker and a real S3 server (moto);
a broker of a test's own, for the tests that stop it; and the local AWS credentials."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.kafka import KafkaBroker
from devstack.processes import free_port
from devstack.s3 import LOCAL_CREDENTIALS, S3Server
from tests.support.jobs import ROOT


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(free_port(), free_port(), tmp_path_factory.mktemp("kafka"), ROOT / ".cache")
    broker.start()
    yield broker
    gc.collect()  # clients the tests left to the garbage collector go while it still answers (own_broker)
    broker.stop(grace=0)  # its data is thrown away: no controlled shutdown to wait for


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, since the test stops it."""
    broker = KafkaBroker(free_port(), free_port(), tmp_path / "kafka", ROOT / ".cache")
    broker.start()
    yield broker
    # The test's clients (held by tracebacks it caught) go first: left to a later collection, they
    # would print librdkafka's "connection refused" to the terminal for as long as they live.
    gc.collect()
    broker.stop(grace=0)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(free_port(), tmp_path_factory.mktemp("s3") / "s3.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def local_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]
