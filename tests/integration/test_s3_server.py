"""The local S3 server behaves as S3 where the products rely on it.

Conditional writes are atomic: of concurrent creates of one key, exactly one succeeds (the
Delta log's commits rely on it). moto checks the condition, then stores: the test widens the
gap between the two (a delay injected into the store), so that without the server's lock
every create would win.

And through the server's HTTP front (waitress): an empty PUT is answered, metadata keys come
back as S3 sends them, connections are kept."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.s3.models import S3Backend
from moto.server import ThreadedMotoServer

import devstack.s3_server  # noqa: F401  (its patches to moto are what is tested)
from devstack.processes import free_port
from devstack.s3 import S3Server

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


# The server the jobs and tests use (devstack.s3_server, a process), as a client sees it.


def test_an_empty_put_that_expects_100_continue_is_answered(s3: S3Server, unique: str) -> None:
    """botocore sends `Expect: 100-continue` with every PutObject, an empty one too (a resume's claim)."""
    s3.create_bucket(unique)
    with socket.create_connection(("127.0.0.1", int(urlsplit(s3.endpoint_url).port or 0)), timeout=5) as conn:
        conn.sendall(
            f"PUT /{unique}/claim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            "Expect: 100-continue\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=0\r\n\r\n".encode()
        )
        reply = conn.makefile("rb")
        status_line = reply.readline()  # times out (an error) if the server waits for a body
        while status_line.startswith(b"HTTP/1.1 100"):  # allowed before the final answer
            assert reply.readline() == b"\r\n"
            status_line = reply.readline()
    assert status_line.startswith(b"HTTP/1.1 200")
    assert s3.client().get_object(Bucket=unique, Key="claim")["Body"].read() == b""


def test_metadata_keys_come_back_in_lowercase_as_from_s3(s3: S3Server, unique: str) -> None:
    s3.create_bucket(unique)
    client = s3.client()
    client.put_object(Bucket=unique, Key="k", Body=b"", Metadata={"waxstreams-claim": "p00", "Mixed-Case": "v"})
    expected = {"waxstreams-claim": "p00", "mixed-case": "v"}
    assert client.head_object(Bucket=unique, Key="k")["Metadata"] == expected
    assert client.get_object(Bucket=unique, Key="k")["Metadata"] == expected


def test_a_client_keeps_its_connection_across_requests(s3: S3Server, unique: str) -> None:
    """As S3 does; a new connection per request cost the server most of its CPU per PUT."""
    s3.create_bucket(unique)
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(s3.endpoint_url).port, timeout=5)
    for _ in range(3):
        connection.request("GET", f"/{unique}?list-type=2")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Connection") != "close"
    assert connection.sock is not None  # http.client drops its socket when the server closes it
    connection.close()
