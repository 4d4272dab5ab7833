"""The engine's private parts this project uses (connectors/engine.py) exist and behave
as relied on, in the *installed* bytewax: an upgrade that moves one fails here."""

from __future__ import annotations

import ast
import atexit
import sqlite3
import threading
import uuid
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import boto3
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors import engine
from producers.kafka_producer import produce_messages
from tests.support.data import make_topics


def test_kafka_source_partition_internals(kafka) -> None:
    topic = f"engine-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, topic, partitions=1)
    produce_messages([(topic, b"k", b"v%d" % i) for i in range(5)], kafka.bootstrap)
    source = KafkaSource([kafka.bootstrap], [topic], tail=False, batch_size=3)
    engine.add_source_config(source, {"auto.offset.reset": "earliest"})
    part = source.build_part("step", f"0-{topic}", None)
    try:
        internals = engine.KafkaPartitionInternals(part)
        assert internals.batch_size == 3 and not internals.at_end
        tp = internals.topic_partition(2)
        assert (tp.topic, tp.partition, tp.offset) == (topic, 0, 2)
        internals.consumer.assign([tp])  # where the partition's own loop reads from
        internals.next_offset = 2
        values = []
        while len(values) < 3:
            values += [m.value() for m in internals.consumer.consume(internals.batch_size, 1.0) if m.error() is None]
        assert values == [b"v2", b"v3", b"v4"]
        assert part.snapshot() == 2  # bytewax's own snapshot reads the offset we set
        internals.mark_end()
        assert internals.at_end
    finally:
        part.close()


def test_partitions_are_listed_without_consumer_properties(kafka, capfd) -> None:
    topic = f"engine-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, topic, partitions=3)
    produce_messages([(topic, b"k", b"v")], kafka.bootstrap)  # acknowledged: the topic's metadata is out
    source = KafkaSource([kafka.bootstrap], [topic], add_config={"group.id": "g", "auto.offset.reset": "earliest"})
    assert engine.list_parts_quietly(source) == [f"{i}-{topic}" for i in range(3)]
    assert "CONFWARN" not in capfd.readouterr().err
    assert source._add_config == {"group.id": "g", "auto.offset.reset": "earliest"}  # the consumers still get them


def test_recovery_store_tables(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    flow = Dataflow("engine")
    counted = op.stateful_map(
        "count",
        op.key_on("k", op.input("in", flow, TestingSource(range(50), 5)), str),
        lambda s, v: ((s or 0) + 1,) * 2,
    )
    op.output("out", counted, TestingSink([]))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))

    [store] = tmp_path.glob("*.sqlite3")
    with closing(sqlite3.connect(store)) as db:
        assert engine.missing_recovery_columns(db) == {}
        assert engine.store_parts(db) == [(0, 1)]
        assert engine.has_history(db)
        [(ex_num, workers, resume_epoch)] = engine.executions(db)
        assert workers == 1 and resume_epoch == 1
        [(worker, frontier)] = engine.frontiers(db, ex_num)
        assert worker == 0 and frontier > 1
        assert engine.all_frontiers(db) == [(ex_num, worker, frontier)]
        epochs = engine.snapshot_epochs(db)
        assert epochs and max(epochs) < frontier
        with db:
            assert engine.delete_snapshots_from(db, max(epochs)) == epochs.count(max(epochs))
        assert max(engine.snapshot_epochs(db), default=0) < max(epochs)


def test_boto3_client_credentials_and_tls_verification(tmp_path: Path, monkeypatch) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):  # botocore falls back to both
        monkeypatch.delenv(name, raising=False)
    cases = [(None, None, True), (False, None, False), (str(bundle), None, str(bundle)), (None, bundle, str(bundle))]
    for verify, env_bundle, expected in cases:
        if env_bundle is not None:
            monkeypatch.setenv("AWS_CA_BUNDLE", str(env_bundle))
        session = boto3.session.Session(
            aws_access_key_id="AKID", aws_secret_access_key="secret", aws_session_token="tok"
        )
        client = session.client("s3", region_name="us-east-1", verify=verify)
        frozen = engine.boto3_client_credentials(client).get_frozen_credentials()
        assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AKID", "secret", "tok")
        assert engine.boto3_client_verify(client) == expected


def test_bytewax_run_calls_the_global_cli_main_last_once_the_flow_is_built() -> None:
    # engine.exit_when_run_ends wraps that global from inside _locate_dataflow: it must be looked up
    # after the flow is built, and nothing of bytewax's may follow the run.
    import bytewax.run
    from bytewax._bytewax import cli_main

    tree = ast.parse(Path(bytewax.run.__file__).read_text())
    [main] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) in ('__name__ == "__main__"', "__name__ == '__main__'")
    ]
    calls = [ast.unparse(stmt) for stmt in main.body if isinstance(stmt, ast.Expr | ast.Assign)]
    assert calls[-1] == "cli_main(**kwargs)"
    assert any("_locate_dataflow(" in call for call in calls[:-1])
    assert bytewax.run.cli_main is cli_main
    assert callable(threading._shutdown) and callable(atexit._run_exitfuncs)  # exit_without_teardown's steps
    assert not engine.exit_when_run_ends()  # any other entry point (here pytest) is left alone
