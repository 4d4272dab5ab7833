"""The Kinesis sink against a real local Kinesis: batching and order, partial failures, the retry
budget, oversize records, and each record once across crashes, reshards and lost answers.

A crash is a partition dropped without `close()`; a stored snapshot is one a later partition is
built from. Every check reads the stream with the source (StatefulKinesisSource, all shards,
parents before children), not with the sink's own read-back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import bytewax.operators as op
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.recovery_store.namespace import new_namespace
from connectors.transports.contract import OutputRecord
from connectors.transports.kinesis.records import MAX_ID_CHARS, MAX_RECORD_BYTES, route
from connectors.transports.kinesis.settings import KinesisSettings
from connectors.transports.kinesis.sink import KinesisSink, KinesisSinkError
from connectors.transports.kinesis.source import StatefulKinesisSource
from connectors.transports.kinesis.transport import KinesisTransport
from devstack.processes import free_port
from tests.support.kinesis import drain, open_shards, record_step, split


class RecordingClient:
    """A real client; PutRecords calls are recorded, `fail(call, index, record)` makes records fail
    inside a call, and `lose(call)` -> (how many records to really send, the error to raise after)
    makes a call's answer get lost. Every other call goes to the real client."""

    def __init__(self, real: Any, fail=lambda call, index, record: False, lose=lambda call: None) -> None:
        self.real = real
        self.fail = fail
        self.lose = lose
        self.calls: list[list[dict]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def put_records(self, StreamName: str, Records: list[dict]) -> dict:
        call = len(self.calls)
        self.calls.append(Records)
        lost = self.lose(call)
        if lost is not None:
            landing, error = lost
            if landing:
                self.real.put_records(StreamName=StreamName, Records=Records[:landing])
            raise error
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

    def sent_ids(self) -> list[str]:
        return [json.loads(r["Data"])["outputId"] for call in self.calls for r in call]


def read_raw(kinesis, stream: str) -> list[tuple[str, bytes]]:
    """(partition key, data) of every record in the stream; a key's records in order."""
    src = StatefulKinesisSource([stream], record_step, 0, endpoint_url=kinesis.endpoint_url, bounded=True)
    return [(key, data) for key, _shard, _seq, data in drain(src.build_part("in", stream, None))]


def read_all(kinesis, stream: str) -> list[tuple[str, dict]]:
    return [(key, json.loads(data)) for key, data in read_raw(kinesis, stream)]


def ids(kinesis, stream: str) -> Counter[str]:
    return Counter(data["outputId"] for _, data in read_all(kinesis, stream))


def rec(unit: str, key: str = "k", **fields: Any) -> OutputRecord:
    return OutputRecord(unit, key.encode(), json.dumps({"unit": unit, **fields}).encode())


def units(names: str, key: str = "k") -> list[OutputRecord]:
    return [rec(name, key) for name in names.split()]


def sink_for(kinesis, stream: str, client: Any = None, **kwargs: Any) -> KinesisSink:
    kwargs.setdefault("namespace", new_namespace())
    kwargs.setdefault("partitions", 1)
    if client is not None:
        return KinesisSink(stream, client_factory=lambda: client, **kwargs)
    return KinesisSink(stream, endpoint_url=kinesis.endpoint_url, **kwargs)


def test_a_flow_writes_each_record_once_with_its_id_first_and_a_keys_records_in_order(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    recording = RecordingClient(kinesis.client())
    records = [rec(f"u{i}", f"k{i % 300}", n=i) for i in range(1200)]
    flow = Dataflow("kinesis_sink")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(records, 600)), lambda r: r.key.decode())
    op.output("out", keyed, sink_for(kinesis, stream, recording, partitions=4))
    run_main(flow)

    written = read_all(kinesis, stream)
    assert sorted(data["outputId"] for _, data in written) == sorted(r.unit for r in records)
    for key, data in written:  # the value's fields, with the id first
        assert list(data) == ["outputId", "unit", "n"] and data["outputId"] == data["unit"] == f"u{data['n']}"
        assert key == f"k{data['n'] % 300}"
    for key in {r.key.decode() for r in records}:
        assert [d["n"] for k, d in written if k == key] == [
            json.loads(r.value)["n"] for r in records if r.key == key.encode()
        ]
    for call in recording.calls:  # a key's next record waits for the one before: one per call
        assert len(call) <= 500 and len({r["PartitionKey"] for r in call}) == len(call)


def test_a_partial_failure_is_retried_and_never_lets_a_keys_records_pass_each_other(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    # a1 fails twice, b2 once: a2 and a3 must wait for a1, b3 for b2.
    first = {"a1": 2, "b2": 1}

    def fail(call: int, index: int, record: dict) -> bool:
        unit = json.loads(record["Data"])["outputId"]
        if first.get(unit, 0) > 0:
            first[unit] -= 1
            return True
        return False

    recording = RecordingClient(kinesis.client(), fail=fail)
    records = [rec(u, u[0]) for u in "a1 b1 a2 b2 c1 a3 b3 c2".split()]
    sink_for(kinesis, stream, recording, retry_seconds=30).build_part("out", "p00", None).write_batch(records)

    per_call = [[json.loads(r["Data"])["outputId"] for r in call] for call in recording.calls]
    assert per_call == [["a1", "b1", "c1"], ["a1", "b2", "c2"], ["a1", "b2"], ["a2", "b3"], ["a3"]]
    written = read_all(kinesis, stream)
    for key in "abc":
        assert [d["outputId"] for k, d in written if k == key] == [r.unit for r in records if r.key == key.encode()]


def test_the_retry_budget_spent_stops_with_one_line(kinesis, kinesis_stream, caplog) -> None:
    stream = kinesis_stream(shards=1)
    recording = RecordingClient(kinesis.client(), fail=lambda c, i, r: r["PartitionKey"] == "b")  # never goes in
    part = sink_for(kinesis, stream, recording, retry_seconds=1.0).build_part("out", "p00", None)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(KinesisSinkError) as failure:
        part.write_batch([rec("1", "a"), rec("2", "b"), rec("3", "c")])
    assert time.monotonic() - started < 3
    message = str(failure.value)
    assert "\n" not in message and "1 record(s) still failing" in message and "KINESIS_SINK_RETRY_SECONDS" in message
    assert stream in message and [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [message]
    assert len(recording.calls) >= 3  # it did retry within the budget
    assert sorted(ids(kinesis, stream)) == ["1", "3"]


def test_max_record_bytes_is_what_fits_and_more_is_refused_before_anything_is_sent(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    sink = sink_for(kinesis, stream)
    part = sink.build_part("out", "p00", None)
    unit, key = "u" * MAX_ID_CHARS, "k" * 10  # the longest id
    padding = sink.max_record_bytes() - len(key) - len(json.dumps({"pad": ""}))
    largest = OutputRecord(unit, key.encode(), json.dumps({"pad": "x" * padding}).encode())
    assert len(largest.key) + len(largest.value) == sink.max_record_bytes()
    too_big = OutputRecord("v", key.encode(), json.dumps({"pad": "x" * (padding + 1 + MAX_ID_CHARS - 1)}).encode())
    with pytest.raises(KinesisSinkError, match="over the 1 MiB limit") as oversize:
        part.write_batch([rec("ok"), too_big])
    assert "\n" not in str(oversize.value)
    assert read_all(kinesis, stream) == []  # checked before anything is sent
    part.write_batch([largest])  # exactly 1 MiB with its id and key: Kinesis takes it
    [(got_key, got)] = read_raw(kinesis, stream)
    assert got_key == key and json.loads(got) == {"outputId": unit, **json.loads(largest.value)}
    assert len(got) + len(key) == MAX_RECORD_BYTES


def test_a_missing_stream_and_refused_calls_stop_with_one_line(kinesis, kinesis_stream, caplog) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(KinesisSinkError, match="'no-such-stream' does not exist"):
        sink_for(kinesis, "no-such-stream").build_part("out", "p00", None)  # a run namespace: it reads back
    assert caplog.records[-1].getMessage().startswith("Kinesis stream 'no-such-stream' does not exist")
    part = sink_for(kinesis, "no-such-stream", namespace="").build_part("out", "p00", None)  # nothing to read
    with pytest.raises(KinesisSinkError, match="'no-such-stream' does not exist"):
        part.write_batch([rec("u")])

    class Denied(RecordingClient):
        def put_records(self, StreamName: str, Records: list[dict]) -> dict:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "PutRecords")

    stream = kinesis_stream(shards=1)
    part = sink_for(kinesis, stream, Denied(kinesis.client())).build_part("out", "p00", None)
    with pytest.raises(KinesisSinkError, match=r"refused PutRecords .*AccessDeniedException.*IAM policy"):
        part.write_batch([rec("u")])


class ThrottledOnce(RecordingClient):
    def put_records(self, StreamName: str, Records: list[dict]) -> dict:
        if not self.calls:
            self.calls.append(Records)
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}}
            raise ClientError(error, "PutRecords")
        return super().put_records(StreamName=StreamName, Records=Records)


def test_a_throttled_call_is_sent_again_and_an_unreachable_endpoint_gives_up(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    throttled = ThrottledOnce(kinesis.client())
    sink_for(kinesis, stream, throttled, retry_seconds=30).build_part("out", "p00", None).write_batch([rec("u")])
    assert len(throttled.calls) == 2 and ids(kinesis, stream) == {"u": 1}

    nobody = KinesisSink(stream, endpoint_url=f"http://127.0.0.1:{free_port()}", retry_seconds=1.0)
    part = nobody.build_part("out", "p00", None)  # no namespace: nothing to read back
    started = time.monotonic()
    with pytest.raises(KinesisSinkError, match="EndpointConnectionError") as failure:
        part.write_batch([rec("u")])
    assert time.monotonic() - started < 5 and "\n" not in str(failure.value)


@pytest.mark.parametrize("runs", ["ABC", "ABCD"])
def test_units_a_dead_run_wrote_stay_fenced_through_later_crashes(kinesis, kinesis_stream, runs: str) -> None:
    """A writes U and dies before its snapshot is stored; B starts without state as well, writes V
    (the input before U), stores its snapshot and dies before reaching U; C resumes from it and
    writes U (ABC), or writes W, stores, and dies before U, and D writes U (ABCD)."""
    stream = kinesis_stream(shards=2)
    sink = sink_for(kinesis, stream, partitions=2)
    mine = next(key for key in "abcd" if route(key, 2) == 0)  # routed to p00
    others = next(key for key in "abcd" if route(key, 2) == 1)

    def run(state: dict | None, records: list[OutputRecord]) -> dict:
        built = sink.build_part("out", "p00", state)
        built.write_batch(records)
        return built.snapshot()

    a = sink.build_part("out", "p00", None)
    a.write_batch(units("U1 U2", mine))
    sink.build_part("out", "p01", None).write_batch(units("O1", others))  # another partition's: not ours to fence
    a.snapshot()  # never stored
    stored = run(None, units("V", mine))
    assert stored["fence"] == {"U1", "U2"}
    if runs == "ABCD":
        stored = run(stored, units("W", mine))
        assert stored["fence"] == {"U1", "U2"}  # not reached yet: still fenced
    last = sink.build_part("out", "p00", stored)
    last.write_batch(units("U1 U2 X", mine))
    assert last.snapshot()["fence"] == set()  # passed
    assert ids(kinesis, stream) == Counter(["U1", "U2", "O1", "V", "X"] + (["W"] if runs == "ABCD" else []))


def test_each_record_once_across_a_split_shard_between_runs(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    client = kinesis.client()
    sink = sink_for(kinesis, stream)
    batch = [rec(f"u{i:02d}", f"k{i % 7}", n=i) for i in range(30)]

    a = sink.build_part("out", "p00", None)
    a.write_batch(batch[:10])
    stored = a.snapshot()
    a.write_batch(batch[10:15])  # past the snapshot, in the shard about to be split
    split(client, stream, open_shards(client, stream)[0]["ShardId"])
    a.write_batch(batch[15:20])  # into its children
    b = sink.build_part("out", "p00", stored)  # A died
    assert b.snapshot()["fence"] == {f"u{i:02d}" for i in range(10, 20)}
    b = sink.build_part("out", "p00", stored)
    b.write_batch(batch[10:20])
    stored = b.snapshot()
    b.write_batch(batch[20:25])
    split(client, stream, open_shards(client, stream)[0]["ShardId"])  # and again, between B and C
    c = sink.build_part("out", "p00", stored)  # B died
    c.write_batch(batch[20:30])
    c.close()

    written = read_all(kinesis, stream)
    assert Counter(d["outputId"] for _, d in written) == Counter(r.unit for r in batch)
    for key in {r.key.decode() for r in batch}:
        assert [d["n"] for k, d in written if k == key] == [i for i in range(30) if f"k{i % 7}" == key]


@pytest.mark.parametrize(
    ("landing", "error"),
    [
        (6, ConnectionClosedError(endpoint_url="injected")),  # all of the call went in
        (3, ReadTimeoutError(endpoint_url="injected")),  # part of it
        (0, ReadTimeoutError(endpoint_url="injected")),  # none
        (6, ClientError({"Error": {"Code": "InternalFailure", "Message": "injected"}}, "PutRecords")),
    ],
)
def test_a_lost_put_records_answer_is_settled_by_reading_back_not_by_sending_again(
    kinesis, kinesis_stream, landing: int, error: Exception
) -> None:
    stream = kinesis_stream(shards=2)
    recording = RecordingClient(kinesis.client(), lose=lambda call: (landing, error) if call == 1 else None)
    part = sink_for(kinesis, stream, recording, retry_seconds=30).build_part("out", "p00", None)
    part.write_batch([rec(f"first{i}", f"k{i}") for i in range(4)])  # positions in both shards
    batch = [rec(f"u{i}", f"k{i}") for i in range(6)]
    part.write_batch(batch)

    assert ids(kinesis, stream) == Counter([f"first{i}" for i in range(4)] + [r.unit for r in batch])
    # Only what did not land went again.
    assert recording.sent_ids()[4:] == [r.unit for r in batch] + [r.unit for r in batch[landing:]]


def test_the_transport_writes_output_records_once_through_its_sink(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    transport = KinesisTransport(
        KinesisSettings(endpoint_url=kinesis.endpoint_url), job="test", sink_namespace=new_namespace()
    )
    assert transport.max_record_bytes(stream) == KinesisSink.max_record_bytes()
    records = [rec(f"u{i}", f"k{i % 5}", n=i) for i in range(40)] + [rec("late", "k0", n=40)]
    flow = Dataflow("kinesis_transport")
    transport.write("out", op.input("in", flow, TestingSource(records, 7)), stream)
    run_main(flow)
    assert ids(kinesis, stream) == Counter(r.unit for r in records)
