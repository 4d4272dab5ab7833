"""What every job shares; a job adds only its middle.

- `read_input`: the job's source on a transport, with the job's batch step wrapped in
  the input metrics and the watermark heartbeats. Returns the valid items (and
  heartbeats) for the middle, and the dead letters of the records the step rejected.
- `write_outputs`: every output stream of the job, and its dead letters: a record over
  its stream's limit becomes an `output_refused` dead letter instead of stopping the job.
- `start`: start-up as one visible step: logging, the metrics server, the checks and
  repair of the recovery store (connectors/recovery_store/; with one directory per
  process, after the processes agreed on the resume epoch: connectors/rendezvous.py);
  says what the run resumes from.
- `transport_for`: the transport the settings name.
- `flow_from_env`: the `flow` of `python -m bytewax.run`; a user's error is one line.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors import backup, engine, rendezvous
from connectors.errors import WaxstreamsError
from connectors.recovery_store.resume import Resume, prepare_resume, recovery_directory
from connectors.recovery_store.resume_epoch import AgreeResumeEpoch
from connectors.recovery_store.state_settings import check_state_settings
from connectors.transports.contract import OutputRecord, RecordBatch, Transport
from connectors.transports.kafka import KafkaTransport
from dataflows import metrics
from dataflows.dead_letters import DeadLetter, RefusedOutput
from dataflows.event_time import NO_WATERMARK, HeartbeatSchedule, partition_watermark
from dataflows.settings import JobSettings

log = logging.getLogger(__name__)
_bounded_since: float | None = None  # set by `start` for a bounded run

# (input partition, records in log order, its newest event time) -> (items, newest event time)
BatchFunction = Callable[[str, RecordBatch, int], tuple[list[Any], int]]


def read_input(
    flow: Dataflow,
    job: str,
    transport: Transport,
    streams: list[str],
    batch: BatchFunction,
    *,
    max_out_of_orderness: timedelta,
    heartbeat_keys: Sequence[str] = (),
) -> tuple[Stream[Any], Stream[OutputRecord]]:
    heartbeats = HeartbeatSchedule(keys=heartbeat_keys)
    bound_ms = int(max_out_of_orderness.total_seconds() * 1000)

    def step(source: str, records: RecordBatch, max_timestamp: int) -> tuple[list[Any], int]:
        items, max_timestamp = batch(source, records, max_timestamp)
        metrics.count_inputs(job, len(records), items)
        return items + heartbeats.due(source, partition_watermark(max_timestamp, bound_ms)), max_timestamp

    # Process 0 of a cluster answers the resume epoch until bytewax first calls the source.
    items = op.input("input", flow, rendezvous.signal_start(transport.source(streams, step, NO_WATERMARK)))
    invalid = op.branch("split_invalid", items, lambda i: isinstance(i, DeadLetter))
    dead = op.map("dead_letter", invalid.trues, dead_letter_record)
    return invalid.falses, dead


def dead_letter_record(dead: DeadLetter) -> OutputRecord:
    key = dead.position.key()
    return OutputRecord(f"dead:{key.decode()}", key, dead.to_json())


def refused_record(job: str, stream: str, limit: int, record: OutputRecord) -> OutputRecord:
    metrics.OUTPUT_REFUSED.labels(job, stream).inc()
    refused = RefusedOutput(stream, record.unit, record.key, record.value, limit)
    return OutputRecord(f"refused:{record.unit}", record.key, refused.to_json())


def _fits(limit: int, record: OutputRecord) -> bool:
    return len(record.key) + len(record.value) <= limit


def write_outputs(
    job: str,
    transport: Transport,
    outputs: Mapping[str, tuple[Stream[OutputRecord], str]],
    dead_letters: Stream[OutputRecord],
    dead_letter_stream: str,
) -> None:
    """Write each `step_id: (records, stream)`; records over their stream's limit, a
    refusal known before sending, join the dead letters as kind `output_refused`."""
    refused = []
    for step_id, (records, stream) in outputs.items():
        limit = transport.max_record_bytes(stream)
        fits: op.BranchOut[OutputRecord, OutputRecord] = op.branch(
            f"{step_id}_fits", records, functools.partial(_fits, limit)
        )
        refused.append(op.map(f"{step_id}_refused", fits.falses, functools.partial(refused_record, job, stream, limit)))
        transport.write(step_id, fits.trues, stream)
    # A dead letter its own stream refuses stops the job: there is nowhere left to put it.
    transport.write("dead_letter_out", op.merge("all_dead_letters", dead_letters, *refused), dead_letter_stream)


def transport_for(settings: JobSettings, environ: Mapping[str, str], job: str, resume: Resume) -> Transport:
    """`resume`: the run's namespace names its outputs' writers (Kafka transactional ids,
    Kinesis record ids) and where their read-back starts."""
    if settings.kinesis is not None:
        # Imported here: only TRANSPORT=kinesis needs it (off the Kafka job's start-up).
        from connectors.transports.kinesis.transport import KinesisTransport

        return KinesisTransport(settings.kinesis, job=job, sink_namespace=resume.sink_namespace)
    kafka = settings.kafka
    if kafka is None:
        msg = f"TRANSPORT={settings.transport} settings hold neither the Kafka nor the Kinesis part"
        raise TypeError(msg)
    return KafkaTransport(
        kafka.brokers,
        settings.consumer_group,
        settings.bounded,
        settings.kafka_batch_size,
        settings.start.start_position,
        settings.start.stop_at_ms,
        kafka.partition_check_seconds,
        kafka.client,
        job=job,
        sink_namespace=resume.sink_namespace,
        native_reader=kafka.reader == "native",
    )


def start(settings: JobSettings, argv: Sequence[str], environ: Mapping[str, str]) -> Resume:
    """Everything a job does once before its flow is built; bytewax opens the store after this.

    A bounded run that starts also says at exit what it did (`metrics.run_summary`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    tune_garbage_collector()
    if settings.kafka is not None and settings.kafka.reader_note:
        log.info("%s", settings.kafka.reader_note)
    metrics.serve(settings.metrics_port)
    global _bounded_since
    _bounded_since = time.monotonic() if settings.bounded else None
    cluster = rendezvous.cluster_from(argv, environ)
    agree: AgreeResumeEpoch | None = None
    if cluster is not None:  # one of several processes: agree on the resume epoch if the store is spread
        meeting = rendezvous.RendezvousSettings(
            settings.start.rendezvous_port, settings.start.rendezvous_timeout_seconds
        )
        agree = rendezvous.ResumeAgreement(cluster, meeting)
    # A store with no state is restored from its backups first (connectors/backup.py).
    process_id = cluster.process_id if cluster is not None else None
    restored = backup.restore_at_start(settings.backup, recovery_directory(argv, environ), process_id)
    agree = backup.checked_agreement(agree, restored)
    resume = prepare_resume(argv, environ, allow_no_recovery=settings.start.allow_no_recovery, agree=agree)
    # A process past those holding the store keeps no state of its own to check (and must not
    # record one: it would be judged as a store from before the record existed).
    if resume.directory is not None and any(resume.directory.glob("*.sqlite3")):
        check_state_settings(resume.directory, settings.state_shape(), resume.fresh)
    backup.start_backups(settings.backup, resume.directory, process_id, argv, environ)
    return resume


# gc.set_threshold's three: allocations between collections of the youngest generation
# (CPython's default: 700), then how many of those before each older one is collected.
GC_THRESHOLDS = (50_000, 20, 100)
# A full collection this often, whatever the thresholds say (`collect_periodically`).
FULL_COLLECTION_S = 60.0


def tune_garbage_collector() -> None:
    """Collect cycles far less often: the hot path makes no cycles but allocates a Python
    object per record (the consumer's messages), so at the default threshold the
    collector runs every few hundred records and walks the young objects each time (a
    fifth of the in-process run's time: `python -m bench.pipeline`). What start-up made is
    frozen: never walked again."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.enable()  # held off while the job's modules were imported (dataflows/__init__.py)
    global _full_collections
    if _full_collections is None:  # once per process (tests start jobs in-process again and again)
        _full_collections = collect_periodically(FULL_COLLECTION_S, threading.Event())


_full_collections: threading.Thread | None = None


def collect_periodically(
    interval_s: float, stop: threading.Event, collect: Callable[[], object] = gc.collect
) -> threading.Thread:
    """`collect()`, a full collection, every `interval_s` until `stop` is set, in a daemon
    thread. At the jobs' thresholds a cycle that reaches the oldest generation can wait
    there for long with all it holds (a dead letter's traceback once kept its whole input
    batch, tens of MB a batch, until the run's resident size passed 1 GB). With start-up
    frozen a collection walks only what the run made: about 2 ms of CPU on the impressions
    job; more where state is many Python objects (the booking job's keys), hence a minute."""

    def run() -> None:
        while not stop.wait(interval_s):
            collect()

    thread = threading.Thread(target=run, name="gc-full", daemon=True)
    thread.start()
    return thread


def flow_from_env(job: str, build: Callable[[Mapping[str, str], Sequence[str]], Dataflow]) -> Dataflow:
    """`build(environment, argv)`; the errors a user can cause end the process with one line."""
    try:
        flow = build(os.environ, sys.argv[1:])
    except WaxstreamsError as exc:
        sys.exit(f"{job}: {exc}")
    gc.enable()  # also when `build` did not start a job (dataflows/__init__.py held it off)
    if _bounded_since is not None:
        since = _bounded_since
        atexit.register(lambda: log.info("%s", metrics.run_summary(job, time.monotonic() - since)))
    # Under `python -m bytewax.run`: a run that ends without error ends the process at once
    # (the exit handlers above still run; the interpreter's teardown, 0.1-0.4 s, is skipped).
    engine.exit_when_run_ends()
    return flow
