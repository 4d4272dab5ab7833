"""The Kinesis source against a real local Kinesis (kinesis-local): resharding, resume, limits, bounded stop."""

from __future__ import annotations

import itertools
import logging
import pickle
import subprocess
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import pytest
from botocore.exceptions import ClientError
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main
from prometheus_client import REGISTRY

from connectors.transports.kinesis.proxy import KinesisUnavailable, check_streams
from connectors.transports.kinesis.settings import KinesisSettings
from connectors.transports.kinesis.source import StatefulKinesisSource
from devstack.processes import free_port
from tests.support.jobs import wait_for
from tests.support.kinesis import drain, merge, open_shards, put, record_step, split


class FaultyClient:
    """A real boto3 client whose chosen calls raise injected errors: `faults[method]` lists, per call, a code or None."""

    def __init__(self, real: Any, **faults: list[str | None]) -> None:
        self.real = real
        self.faults = {name: list(codes) for name, codes in faults.items()}
        self.calls: dict[str, list[tuple[float, dict]]] = defaultdict(list)
        self.raised: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(**kwargs: Any) -> Any:
            self.calls[name].append((time.monotonic(), kwargs))
            codes = self.faults.get(name)
            code = codes.pop(0) if codes else None
            if code is not None:
                self.raised.append(code)
                raise ClientError({"Error": {"Code": code, "Message": "injected by the test"}}, name)
            return method(**kwargs)

        return call


def source(kinesis, streams: list[str], **kwargs: Any) -> StatefulKinesisSource:
    options: dict[str, Any] = {"discovery_seconds": 0.5, "idle_poll_seconds": 0.2, **kwargs}
    return StatefulKinesisSource(streams, record_step, 0, endpoint_url=kinesis.endpoint_url, **options)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_record_once_in_key_order_across_split_and_merge_while_flowing(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    client = kinesis.client()
    keys = [f"k{i:02d}" for i in range(24)]
    written: dict[str, list[str]] = defaultdict(list)
    batches = 0
    done = threading.Event()
    errors: list[BaseException] = []

    def produce(rounds: int) -> None:
        nonlocal batches
        for _ in range(rounds):
            for key, _shard, seq in put(client, stream, [(k, f"{k}:{batches}".encode()) for k in keys]):
                written[key].append(seq)
            batches += 1

    def producer() -> None:
        try:
            produce(10)
            first, _second = open_shards(client, stream)
            split(client, stream, first["ShardId"])  # -> two children of the first shard
            produce(10)
            _low, high, other = open_shards(client, stream)
            merge(client, stream, high["ShardId"], other["ShardId"])  # parents: a split child and an original
            produce(10)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    # Small reads: the reader trails the producer, so children hold records while parents are still read.
    part = source(kinesis, [stream], max_records=7).build_part("in", stream, None)
    thread = threading.Thread(target=producer)
    thread.start()
    items = drain(part, until=lambda items: done.is_set() and len(items) >= 30 * len(keys), timeout=180)
    thread.join()
    assert not errors, errors
    assert len(items) == 30 * len(keys) and len({seq for _, _, seq, _ in items}) == len(items)
    read: dict[str, list[str]] = defaultdict(list)
    for key, _shard, seq, _data in items:
        read[key].append(seq)
    assert read == written  # per partition key, the order written

    shards = client.list_shards(StreamName=stream)["Shards"]
    assert len(shards) == 5  # 2 originals, 2 split children, 1 merge child
    position = {}
    for index, (_key, shard, _seq, _data) in enumerate(items):
        position.setdefault(shard, []).append(index)
    for shard in shards:
        parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
        if not parents:
            continue
        assert shard["ShardId"] in position, f"{shard['ShardId']} got no records: the test did not exercise it"
        first_child = min(position[shard["ShardId"]])
        for parent in parents:
            assert max(position[parent]) < first_child, f"{shard['ShardId']} read before its parent {parent} ended"

    # Nothing left, nothing read twice: a bounded reader resumed from the snapshot finds no record.
    snapshot = pickle.loads(pickle.dumps(part.snapshot()))
    assert snapshot[1] == len(items)
    rest = drain(source(kinesis, [stream], bounded=True).build_part("in", stream, snapshot), timeout=60)
    assert rest == []


def test_resume_from_a_snapshot_yields_exactly_the_remaining_records(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    client = kinesis.client()
    written = put(client, stream, [(f"k{i % 7}", f"a{i}".encode()) for i in range(60)])
    split(client, stream, open_shards(client, stream)[0]["ShardId"])
    written += put(client, stream, [(f"k{i % 7}", f"b{i}".encode()) for i in range(60)])
    bounded = source(kinesis, [stream], bounded=True, max_records=10)

    first_part = bounded.build_part("in", stream, None)
    first = drain(first_part, until=lambda items: len(items) >= 50)
    snapshot = pickle.loads(pickle.dumps(first_part.snapshot()))  # as bytewax stores it
    assert snapshot[1] == len(first)
    first_part.next_batch()  # read on past the snapshot: a crash now loses this, the resume redoes it

    resumed = bounded.build_part("in", stream, snapshot)
    rest = drain(resumed)
    assert 50 <= len(first) < 120
    read = [seq for _, _, seq, _ in first + rest]
    assert sorted(read) == sorted(seq for _, _, seq in written) and len(set(read)) == len(read)
    # The lag gauge (MillisBehindLatest) of each open shard read to its tip says 0; the closed parent has none.
    lag = {
        shard["ShardId"]: REGISTRY.get_sample_value(
            "waxstreams_kinesis_millis_behind_latest", {"stream": stream, "shard": shard["ShardId"]}
        )
        for shard in client.list_shards(StreamName=stream)["Shards"]
    }
    assert lag == {"shardId-000000000000": None, "shardId-000000000001": 0, "shardId-000000000002": 0}
    resumed.close()


class PagingClient(FaultyClient):
    """ListShards one shard per page, so discovery must follow NextToken."""

    def list_shards(self, **kwargs: Any) -> dict:
        self.calls["list_shards"].append((time.monotonic(), kwargs))
        return self.real.list_shards(MaxResults=1, **kwargs)


def test_bytewax_recovery_resumes_after_what_a_bounded_run_read(kinesis, kinesis_stream, tmp_path) -> None:
    stream = kinesis_stream(shards=1)
    client = kinesis.client()
    first = put(client, stream, [(f"k{i % 3}", f"a{i}".encode()) for i in range(40)])
    split(client, stream, open_shards(client, stream)[0]["ShardId"])
    paging = PagingClient(kinesis.client())
    init_db_dir(tmp_path, 1)

    def run() -> list:
        flow = Dataflow("kinesis_resume")
        out: list = []
        src = source(kinesis, [stream], bounded=True, client_factory=lambda: paging)
        op.output("out", op.input("in", flow, src), TestingSink(out))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))
        return out

    assert sorted(seq for _, _, seq, _ in run()) == sorted(seq for _, _, seq in first)
    second = put(client, stream, [(f"k{i % 3}", f"b{i}".encode()) for i in range(40)])
    assert sorted(seq for _, _, seq, _ in run()) == sorted(seq for _, _, seq in second)  # only what is new
    assert any("NextToken" in kwargs for _, kwargs in paging.calls["list_shards"])  # 3 shards, 1 a page


def test_position_out_of_retention_resumes_at_trim_horizon_with_one_warning(kinesis, kinesis_stream, caplog) -> None:
    stream = kinesis_stream(shards=1)
    client = kinesis.client()
    written = put(client, stream, [("k", f"{i}".encode()) for i in range(20)])
    shard_id = written[0][1]
    # A sequence number the stream no longer has (as after retention trimmed it).
    stale = {"shards": {shard_id: {"pos": ["AFTER_SEQUENCE_NUMBER", "1" * 56], "parents": []}}, "done": []}
    before = counter("waxstreams_kinesis_position_resets_total", stream=stream)
    with caplog.at_level(logging.WARNING, logger="connectors.transports.kinesis.reader"):
        items = drain(source(kinesis, [stream], bounded=True).build_part("in", stream, (stale, 0)))
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TRIM_HORIZON" in warnings[0].getMessage() and shard_id in warnings[0].getMessage()
    assert counter("waxstreams_kinesis_position_resets_total", stream=stream) == before + 1


def test_expired_iterator_is_renewed_from_the_last_sequence_number(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    written = put(kinesis.client(), stream, [("k", f"{i}".encode()) for i in range(30)])
    faulty = FaultyClient(kinesis.client(), get_records=[None, "ExpiredIteratorException"])
    src = source(kinesis, [stream], bounded=True, max_records=10, client_factory=lambda: faulty)
    items = drain(src.build_part("in", stream, None))
    assert faulty.raised == ["ExpiredIteratorException"]
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]  # none lost, none twice
    renewal = faulty.calls["get_shard_iterator"][1][1]
    assert (
        renewal["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER" and renewal["StartingSequenceNumber"] == written[9][2]
    )


def test_throttling_is_retried_with_backoff_and_reads_stay_within_5_per_second(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=1)
    written = put(kinesis.client(), stream, [("k", f"{i}".encode()) for i in range(40)])
    throttles = ["ProvisionedThroughputExceededException"] * 3 + ["LimitExceededException"]
    faulty = FaultyClient(kinesis.client(), get_records=[None, *throttles])
    before = counter("waxstreams_kinesis_retries_total", stream=stream, reason="throttled")
    src = source(kinesis, [stream], bounded=True, max_records=5, client_factory=lambda: faulty)
    items = drain(src.build_part("in", stream, None))
    assert faulty.raised == throttles
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    assert counter("waxstreams_kinesis_retries_total", stream=stream, reason="throttled") == before + 4
    times = [t for t, _ in faulty.calls["get_records"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.19, gaps  # never more than 5 GetRecords per second on a shard
    # The backoff doubles while throttling goes on: 0.2, 0.4, 0.8, 1.6 s, jittered to half..full.
    assert gaps[4] >= 0.75 and gaps[4] > gaps[1], gaps


def test_bounded_run_through_bytewax_stops_at_the_tip_and_at_shard_end(kinesis, kinesis_stream) -> None:
    one, two = kinesis_stream(shards=2), kinesis_stream(shards=1)
    client = kinesis.client()
    written = put(client, one, [(f"k{i}", f"{i}".encode()) for i in range(50)])
    split(client, one, open_shards(client, one)[0]["ShardId"])  # a closed shard: read to SHARD_END
    written += put(client, one, [(f"k{i}", f"{i}".encode()) for i in range(50)])
    written += put(client, two, [(f"k{i}", f"{i}".encode()) for i in range(10)])

    for workers in (1, 2):  # 2 workers: each stream's partition on its own worker
        flow = Dataflow("kinesis_bounded")
        out: list = []
        op.output("out", op.input("in", flow, source(kinesis, [one, two], bounded=True)), TestingSink(out))
        cluster_main(flow, [], 0, worker_count_per_proc=workers)  # returns only if the source stops by itself
        assert sorted(seq for _, _, seq, _ in out) == sorted(seq for _, _, seq in written)


def test_latest_and_at_timestamp_start_positions(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    client = kinesis.client()
    old = put(client, stream, [(f"k{i}", b"old") for i in range(10)])
    latest = source(kinesis, [stream], start_position="LATEST").build_part("in", stream, None)
    assert latest.next_batch() == []  # takes its LATEST iterators
    # Snapshotted before its first record, LATEST is kept as "at the start time": a resume skips nothing new.
    before_first = pickle.loads(pickle.dumps(latest.snapshot()))
    assert {entry["pos"][0] for entry in before_first[0]["shards"].values()} == {"AT_TIMESTAMP"}
    cut = datetime.now(UTC)
    wait_for(lambda: datetime.now(UTC).timestamp() - cut.timestamp() > 0.05, what="the clock to pass the cut")
    new = put(client, stream, [(f"k{i}", b"new") for i in range(10)])
    items = drain(latest, until=lambda items: len(items) >= 10)
    assert sorted(seq for _, _, seq, _ in items) == sorted(seq for _, _, seq in new)
    resumed = drain(source(kinesis, [stream], bounded=True).build_part("in", stream, before_first))
    assert sorted(seq for _, _, seq, _ in resumed) == sorted(seq for _, _, seq in new)
    at = source(kinesis, [stream], bounded=True, start_position="AT_TIMESTAMP", start_timestamp=cut)
    items = drain(at.build_part("in", stream, None))
    assert sorted(seq for _, _, seq, _ in items) == sorted(seq for _, _, seq in new)
    assert not {seq for _, _, seq in old} & {seq for _, _, seq, _ in items}


def test_transient_failures_are_retried_with_one_warning_per_streak(kinesis, kinesis_stream, caplog) -> None:
    stream = kinesis_stream(shards=1)
    written = put(kinesis.client(), stream, [("k", f"{i}".encode()) for i in range(10)])
    faulty = FaultyClient(kinesis.client(), get_records=["InternalFailure", "ServiceUnavailable", "500"])
    before = counter("waxstreams_kinesis_retries_total", stream=stream, reason="transient")
    with caplog.at_level(logging.WARNING, logger="connectors.transports.kinesis.reader"):
        items = drain(
            source(kinesis, [stream], bounded=True, client_factory=lambda: faulty).build_part("in", stream, None)
        )
    assert [seq for _, _, seq, _ in items] == [seq for _, _, seq in written]
    assert counter("waxstreams_kinesis_retries_total", stream=stream, reason="transient") == before + 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_an_idle_stream_is_not_busy_polled(kinesis, kinesis_stream) -> None:
    stream = kinesis_stream(shards=2)
    counting = FaultyClient(kinesis.client())
    part = source(
        kinesis, [stream], idle_poll_seconds=1.0, discovery_seconds=10, client_factory=lambda: counting
    ).build_part("in", stream, None)
    assert part.next_batch() == []  # one read per shard: both at their tip
    wake = part.next_awake()
    assert wake is not None and 0.5 < (wake - datetime.now(UTC)).total_seconds() <= 1.0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # a scheduler that ignored next_awake still gets no extra calls
        assert part.next_batch() == []
    assert len(counting.calls["get_records"]) == 2


def test_missing_stream_and_unreachable_endpoint_fail_with_one_line(kinesis) -> None:
    settings = KinesisSettings(streams=("no-such-stream",), endpoint_url=kinesis.endpoint_url)
    with pytest.raises(KinesisUnavailable) as missing:
        check_streams(settings)
    assert "'no-such-stream'" in str(missing.value) and "KINESIS_STREAMS" in str(missing.value)
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KinesisUnavailable) as unreachable:
        check_streams(KinesisSettings(streams=("x",), endpoint_url=nobody))
    assert nobody in str(unreachable.value) and "KINESIS_ENDPOINT_URL" in str(unreachable.value)
    with pytest.raises(KinesisUnavailable) as at_build:
        StatefulKinesisSource(["x"], record_step, 0, endpoint_url=nobody).build_part("in", "x", None)
    assert "KINESIS_ENDPOINT_URL" in str(at_build.value)
    with pytest.raises(KinesisUnavailable) as missing_at_build:
        source(kinesis, ["no-such-stream"]).build_part("in", "no-such-stream", None)
    assert "'no-such-stream'" in str(missing_at_build.value) and "KINESIS_STREAMS" in str(missing_at_build.value)
    for exc in (missing.value, unreachable.value, at_build.value, missing_at_build.value):
        assert "\n" not in str(exc)


def test_kinesis_local_listens_on_loopback_only(kinesis) -> None:
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    ours = [line.split()[3] for line in listening if f"pid={kinesis.pid}," in line]
    assert sorted(ours) == sorted([f"127.0.0.1:{kinesis.port}", f"127.0.0.1:{kinesis.tls_port}"])
