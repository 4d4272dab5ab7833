"""The Kinesis sink against a real local Kinesis: batching, partial failures, retry budget, oversize records."""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
import pytest
from botocore.exceptions import ClientError
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.transports.kinesis_sink import KinesisSink, KinesisSinkError
from connectors.transports.kinesis_source import StatefulKinesisSource
from devstack.processes import free_port
from tests.kinesis_fixtures import drain, record_step

pytestmark = pytest.mark.integration


class RecordingClient:
    """A real client; PutRecords calls are recorded, and `fail(call_index, record_index, record)` injects failures."""

    def __init__(self, real: Any, fail=lambda call, index, record: False) -> None:
        self.real = real
        self.fail = fail
        self.calls: list[list[dict]] = []

    def put_records(self, StreamName: str, Records: list[dict]) -> dict:
        call = len(self.calls)
        self.calls.append(Records)
        failing = [i for i, record in enumerate(Records) if self.fail(call, i, record)]
        sent = [r for i, r in enumerate(Records) if i not in failing]
        results = iter(self.real.put_records(StreamName=StreamName, Records=sent)["Records"] if sent else [])
        # A partial success as Kinesis reports it: failed entries carry an error, in request order.
        out = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded (injected)"}
            if i in failing
            else next(results)
            for i in range(len(Records))
        ]
        return {"FailedRecordCount": len(failing), "Records": out}


def read_all(kinesis, stream: str) -> list[tuple[str, bytes]]:
    src = StatefulKinesisSource([stream], record_step, 0, endpoint_url=kinesis.endpoint_url, bounded=True)
    return [(key, data) for key, _shard, _seq, data in drain(src.build_part("in", stream, None))]


def run_sink(sink: KinesisSink, items: list[tuple[str, bytes]], batch_size: int) -> None:
    flow = Dataflow("kinesis_sink")
    op.output("out", op.input("in", flow, TestingSource(items, batch_size)), sink)
    run_main(flow)


def test_sink_writes_in_calls_of_at_most_500_records_in_order(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    recording = RecordingClient(kinesis.client())
    items = [(f"k{i % 13}", f"v{i}".encode()) for i in range(1200)]
    run_sink(KinesisSink(stream, client_factory=lambda: recording), items, batch_size=600)
    assert [len(call) for call in recording.calls] == [500, 100, 500, 100]  # per bytewax batch of 600
    written = read_all(kinesis, stream)
    assert sorted(written) == sorted(items)
    for key in {k for k, _ in items}:  # per key, in order
        assert [d for k, d in written if k == key] == [d for k, d in items if k == key]


def test_sink_retries_the_failed_records_of_a_partial_success(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    # First call: every third record fails; second call: the first of the retried ones fails again.
    recording = RecordingClient(
        kinesis.client(), fail=lambda call, i, _: (call == 0 and i % 3 == 0) or (call == 1 and i == 0)
    )
    items = [(f"k{i}", f"v{i}".encode()) for i in range(30)]
    sink = KinesisSink(stream, retry_seconds=30, client_factory=lambda: recording)
    sink.build("out", 0, 1).write_batch(items)
    assert [len(call) for call in recording.calls] == [30, 10, 1]
    assert [r["Data"] for r in recording.calls[1]] == [d for i, (_, d) in enumerate(items) if i % 3 == 0]
    assert sorted(read_all(kinesis, stream)) == sorted(items)  # each once


def test_sink_raises_one_line_when_the_retry_budget_is_spent(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    recording = RecordingClient(
        kinesis.client(), fail=lambda c, i, rec: rec["PartitionKey"] == "b"
    )  # never goes through
    sink = KinesisSink(stream, retry_seconds=1.0, client_factory=lambda: recording)
    started = time.monotonic()
    with pytest.raises(KinesisSinkError) as failure:
        sink.build("out", 0, 1).write_batch([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert time.monotonic() - started < 3
    message = str(failure.value)
    assert "\n" not in message and "1 record(s) still failing" in message and "KINESIS_SINK_RETRY_SECONDS" in message
    assert len(recording.calls) >= 3  # it did retry within the budget
    assert sorted(read_all(kinesis, stream)) == [("a", b"1"), ("c", b"3")]


def test_sink_refuses_an_oversize_record_and_a_missing_stream(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    part = KinesisSink(stream, endpoint_url=kinesis.endpoint_url).build("out", 0, 1)
    key = "k" * 10
    with pytest.raises(KinesisSinkError, match="over the 1 MiB limit") as oversize:
        part.write_batch([("ok", b"x"), (key, b"x" * (1024 * 1024 - len(key) + 1))])
    assert "\n" not in str(oversize.value)
    assert read_all(kinesis, stream) == []  # checked before anything is sent: nothing half-written
    part.write_batch([(key, b"x" * (1024 * 1024 - len(key)))])  # exactly 1 MiB with its key: fine
    missing = KinesisSink("no-such-stream", endpoint_url=kinesis.endpoint_url).build("out", 0, 1)
    with pytest.raises(KinesisSinkError, match="'no-such-stream' does not exist"):
        missing.write_batch([("k", b"v")])


class ThrottledOnce(RecordingClient):
    def put_records(self, StreamName: str, Records: list[dict]) -> dict:
        if not self.calls:
            self.calls.append(Records)
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}}
            raise ClientError(error, "PutRecords")
        return super().put_records(StreamName=StreamName, Records=Records)


def test_sink_retries_a_throttled_call_and_gives_up_on_an_unreachable_endpoint(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    throttled = ThrottledOnce(kinesis.client())
    KinesisSink(stream, retry_seconds=30, client_factory=lambda: throttled).build("out", 0, 1).write_batch(
        [("k", b"v")]
    )
    assert len(throttled.calls) == 2 and read_all(kinesis, stream) == [("k", b"v")]

    nobody = f"http://127.0.0.1:{free_port()}"
    part = KinesisSink(stream, endpoint_url=nobody, retry_seconds=1.0).build("out", 0, 1)
    started = time.monotonic()
    with pytest.raises(KinesisSinkError, match="EndpointConnectionError") as failure:
        part.write_batch([("k", b"v")])
    assert time.monotonic() - started < 5 and "\n" not in str(failure.value)
