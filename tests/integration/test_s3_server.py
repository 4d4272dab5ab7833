"""The local S3 server keeps S3's promise that conditional writes are atomic: of concurrent
creates of one key, exactly one succeeds (the Delta log's commits rely on it).

moto checks the condition, then stores: the test widens the gap between the two (a delay
injected into the store), so that without the server's lock every create would win."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.s3.models import S3Backend
from moto.server import ThreadedMotoServer

import devstack.s3_server  # noqa: F401  (its patches to moto are what is tested)
from devstack.processes import free_port

WRITERS = 6


@pytest.fixture
def slow_store_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    store = S3Backend.put_object

    def slow_store(self, *args, **kwargs):
        time.sleep(0.05)  # between moto's condition check and the store
        return store(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_store)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_of_concurrent_creates_of_one_key_exactly_one_wins(slow_store_server: str) -> None:
    client = boto3.client("s3", endpoint_url=slow_store_server, config=Config(max_pool_connections=WRITERS))
    client.create_bucket(Bucket="creates")
    wins: list[bytes] = []
    refusals: Counter[str] = Counter()
    start = threading.Barrier(WRITERS)

    def create(n: int) -> None:
        body = f"writer {n}".encode()
        start.wait()
        try:
            client.put_object(Bucket="creates", Key="_delta_log/00001.json", Body=body, IfNoneMatch="*")
        except ClientError as exc:
            refusals[exc.response["Error"]["Code"]] += 1
        else:
            wins.append(body)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert refusals == Counter({"PreconditionFailed": WRITERS - 1})
    assert client.get_object(Bucket="creates", Key="_delta_log/00001.json")["Body"].read() == wins[0]
