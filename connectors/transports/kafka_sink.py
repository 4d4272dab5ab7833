"""Kafka output, exactly once for `read_committed` readers: one transaction per sink partition and epoch.

    op.output(step_id, keyed_records, KafkaTxSink(brokers, topic, client_config, job=..., namespace=...))

`keyed_records` are `(routing key, OutputRecord)` with the routing key `routing_key(record)`
(a crc32 of the record's Kafka key), so a key's records go through one sink partition,
in order. A fixed number of sink partitions (`partitions`, names `p00`, `p01`, ...), each
with a transactional, idempotent producer, `transactional.id` =
`waxstreams.<job>.<step>.<run namespace>.<partition>`.

The protocol (connectors/sinks/fence.py, docs/architecture.md "Exactly-once"):
- a transaction begins with the first record of an epoch; `snapshot()` puts the
  manifest (sink partition, seq, the transaction's unit ids) into the control topic
  `<topic>.waxstreams-commits` in the same transaction (kafka_control.py), commits, and
  returns `CommitState(namespace, next_seq, position, fence)`, `position` the control
  partition's offset after the manifest. An epoch without records opens none;
- a resume first calls `init_transactions()`, which fences any zombie with the same
  transactional.id and aborts its open transaction; then it reads the control
  partition back (read_committed) from the stored position and fences the units of
  this partition's manifests with seq >= the stored next_seq. The replay drops fenced
  units; a fenced unit leaves the fence once the replay passes it;
- nothing is dropped silently: every record's delivery report is checked. A record
  refused at write or commit time (the broker unreachable past message.timeout.ms,
  fenced by a newer producer, not authorised, no transactions) stops the job with one
  line (logged, then raised); the restart replays from the last stored snapshot;
- a transaction that goes abortable (its transactional id idle past transactional.id.expiration.ms)
  is aborted and its epoch written again in a new one (kafka_tx_retry.py).

What readers must set: `isolation.level=read_committed` (Java `isolation.level`,
librdkafka `isolation.level`, the default in librdkafka clients but NOT in Java's).
A read_uncommitted reader also sees aborted transactions' records (a crashed epoch's,
written again by the replay). Records become visible when their epoch commits: about
one epoch interval (bytewax's `-s`) after they are produced.

transaction.timeout.ms (KAFKA_PROPERTY_TRANSACTION__TIMEOUT__MS, default 600000): a
transaction is open from an epoch's first record to its snapshot, so this must exceed
the epoch interval by a wide margin (at least twice it): the broker aborts a transaction
older than it. A transaction open longer than half of it is committed within the epoch
(with a warning): safe, since a resume fences it like any commit past its snapshot. It is
capped by the broker's transaction.max.timeout.ms (15 min by default). It is also how
long read_committed readers of an output partition may stall behind a crashed job's open
transaction when the job is not restarted (a restart aborts it at once). librdkafka's
message.timeout.ms defaults to it: records the broker does not take within it stop the job.
"""

from __future__ import annotations

import logging
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.sinks.fence import CommitState, Fence
from connectors.transports.contract import OutputRecord
from connectors.transports.kafka_control import (
    INIT_STEP,
    NAMESPACE_CLOCK_SKEW_MS,
    PRODUCER_BATCH_BYTES,
    PRODUCER_MESSAGE_MAX_BYTES,
    KafkaSinkError,
    committed_past,
    control_topic,
    ensure_control_topic,
    error_of,
    manifest_values,
    namespace_time_ms,
    read_manifests,
    record_limit,
    refusal,
    topic_max_message_bytes,
    transactional_id,
)
from connectors.transports.kafka_tx_retry import Abortable, EpochCopy, abort, abortable, guarded, rewrite_line, worse

log = logging.getLogger(__name__)

DEFAULT_TRANSACTION_TIMEOUT_MS = 600_000  # a broker outage of minutes is ridden out, as librdkafka's own 5 min
# Readers see an epoch only once it commits: a short linger costs nothing.
# Sparse connections off (connect to every broker at once; librdkafka's own transaction tests
# do too): with them on, librdkafka drops the bootstrap connection once it has learnt the
# brokers, and init_transactions, finding no broker up, often waits for its coordinator
# timer (500 ms, fixed): 55-505 ms on the main thread as each partition is built, 2 ms off.
# A cluster that limits new connections per second can set it back (docs/settings.md).
PRODUCER_DEFAULTS = {"linger.ms": "5", "enable.sparse.connections": "false"}


def routing_key(record: OutputRecord) -> str:
    """bytewax's routing key for a record: stable across processes (never Python's hash())."""
    return str(zlib.crc32(record.key))


def _weakly(owner: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` of `owner` as a callback that does not keep `owner` alive."""
    ref = weakref.ref(owner)

    def call(*args: Any) -> Any:
        alive = ref()
        return None if alive is None else method(alive, *args)

    return call


class _TxPartition(StatefulSinkPartition[OutputRecord, dict]):
    def __init__(self, sink: KafkaTxSink, step_id: str, part: str, state: CommitState) -> None:
        self._sink = sink
        self._topic = sink.topic
        self._control = control_topic(sink.topic)
        self._part = part
        # Its own control partition: a resume then waits for no other sink partition's open
        # transaction (its own zombie's is aborted by init_transactions before it reads).
        self._control_partition = int(part.lstrip("p"))
        self._namespace = state.namespace
        self._txid = transactional_id(sink.job, step_id, state.namespace, part)
        self._key = self._txid.encode()
        self._next_seq = state.next_seq
        self._position: int | None = state.position
        self._in_txn = False
        self._txn_started = 0.0
        self._units: dict[str, None] = {}  # this transaction's units, in order
        self._passed: set[str] = set()  # fenced units the replay reached this epoch
        self._failure: KafkaError | None = None  # the worst seen in this transaction
        self._copy = EpochCopy()  # this transaction's records, to write again if it goes abortable
        self._stopped: str | None = None
        self._manifest_end: int | None = None
        self._warned_long_epoch = False
        self._producer = Producer(
            {
                "bootstrap.servers": sink.bootstrap,
                **PRODUCER_DEFAULTS,
                # The broker checks a whole record batch against the topic's max.message.bytes.
                "batch.size": str(sink.batch_bytes),
                "transaction.timeout.ms": str(DEFAULT_TRANSACTION_TIMEOUT_MS),
                **sink.client_config,
                "enable.idempotence": True,
                "transactional.id": self._txid,
                # Through a weak reference: a producer holding its partition would keep both (and
                # librdkafka's threads) alive past the partition's end, as a cycle no collector frees.
                "on_delivery": _weakly(self, _TxPartition._delivered),
                "error_cb": _weakly(self, _TxPartition._client_error),
                "log_level": 3,
            }
        )
        timeout_ms = int(self._producer_setting("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS))
        self._txn_timeout_s = timeout_ms / 1000
        self._fence = Fence(state.fence)
        self._call(INIT_STEP, lambda: self._producer.init_transactions(sink.start_timeout_s))
        since = namespace_time_ms(state.namespace) if state.position is None else None
        units, self._next_seq, self._position = self._read_back(
            state, None if since is None else since - NAMESPACE_CLOCK_SKEW_MS
        )
        if units:
            log.info(
                "Kafka output topic %s, sink partition %s: %d unit(s) committed past the restored snapshot "
                "stay; the replay skips them",
                self._topic,
                part,
                len(units),
            )
        self._fence.add(units)

    def _producer_setting(self, name: str, default: int) -> str:
        return str(self._sink.client_config.get(name, default))

    def _read_back(self, state: CommitState, since_ms: int | None) -> tuple[set[str], int, int]:
        """The units committed past `state`, the next seq, and where a later resume may read back from."""
        try:
            manifests, end = read_manifests(
                self._sink.bootstrap,
                self._sink.client_config,
                self._control,
                self._control_partition,
                self._key,
                state.position,
                since_ms,
                self._txn_timeout_s + self._sink.start_timeout_s,
            )
            units, next_seq = committed_past(manifests, state.next_seq)
            return units, next_seq, end
        except KafkaException as exc:
            self._fail(refusal(self._control, self._txid, error_of(exc), "reading back the manifests"))

    def _note(self, error: KafkaError) -> KafkaError:
        self._failure = worse(self._failure, error)
        return self._failure

    def _delivered(self, error: KafkaError | None, msg: Any) -> None:
        if error is not None:
            self._note(error)
        elif msg.topic() == self._control:
            self._manifest_end = msg.offset() + 1

    def _client_error(self, error: KafkaError) -> None:
        # Fatal ones (fenced, not authorised) end the producer; the rest (a broker gone) it retries
        # until message.timeout.ms, and the delivery reports say what became of the records.
        if error.fatal():
            self._note(error)

    def _fail(self, line: str) -> NoReturn:
        log.error("%s", line)  # bytewax may abort without a word if snapshot() and close() both raise
        self._stopped = line  # an aborted epoch is never followed by a snapshot
        raise KafkaSinkError(line)

    def _refused(self, error: KafkaError, when: str) -> NoReturn:
        """Raises Abortable if the open transaction may be written again, else stops the job."""
        if self._in_txn and abortable(error):
            raise Abortable(error, when)
        self._fail(refusal(self._topic, self._txid, error, when))

    def _call(self, when: str, call: Any) -> Any:
        try:
            return call()
        except KafkaException as exc:
            self._fail(refusal(self._topic, self._txid, error_of(exc), when))

    def _produce(self, topic: str, value: bytes, key: bytes, when: str, partition: int = -1) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition)
                return
            except BufferError:  # librdkafka's queue is full: serve delivery reports while it sends
                self._serve(0.1)
            except KafkaException as exc:
                self._refused(self._note(error_of(exc)), when)

    def _serve(self, timeout: float) -> None:
        """Delivery reports and client errors; raises on the first refusal. Never flush(): with
        confluent-kafka 2.16 a fatal error (fenced) inside flush() becomes a SystemError."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:  # a fatal error: the producer is done
            self._note(error_of(exc))
        if self._failure is not None:
            self._refused(self._failure, "delivering records")

    def write_batch(self, values: list[OutputRecord]) -> None:
        if self._stopped is not None:
            raise KafkaSinkError(self._stopped)
        guarded(lambda: self._serve(0), self._rewrite)
        fenced = {record.unit for record in values if record.unit in self._fence} if self._fence else set()
        if fenced:
            self._fence.passed(fenced)
            self._passed |= fenced
        if self._in_txn and time.monotonic() - self._txn_started > self._txn_timeout_s / 2:
            # Committing early is safe (a resume fences it like any commit past its snapshot);
            # a transaction older than transaction.timeout.ms is aborted by the broker.
            if not self._warned_long_epoch:
                log.warning(
                    "Kafka output topic %s: an epoch outlasts half of transaction.timeout.ms (%.0fs): committing "
                    "within the epoch; set KAFKA_PROPERTY_TRANSACTION__TIMEOUT__MS above twice the epoch interval",
                    self._topic,
                    self._txn_timeout_s,
                )
                self._warned_long_epoch = True
            self._commit()
        fresh = [record for record in values if record.unit not in self._passed]
        if not fresh:
            return
        if not self._in_txn:
            self._begin()
        self._units.update(dict.fromkeys(record.unit for record in fresh))
        self._copy.keep((record.value, record.key) for record in fresh)
        guarded(lambda: self._write(fresh), self._rewrite)

    def _write(self, fresh: list[OutputRecord]) -> None:
        for record in fresh:
            self._produce(self._topic, record.value, record.key, "producing")
        self._serve(0)

    def _begin(self) -> None:
        self._call("beginning a transaction", self._producer.begin_transaction)
        self._in_txn, self._txn_started = True, time.monotonic()

    def _rewrite(self, refused: Abortable) -> None:
        """Aborts the open transaction and writes the epoch's records again in a new one; stops the
        job if the abort reveals a worse error, the records were not kept or the attempts are spent."""
        error = abort(self._producer, self._sink.start_timeout_s)  # serves its records' delivery reports
        self._in_txn = False
        failure = self._note(error) if error is not None else self._failure or refused.error
        if error is not None or not abortable(failure):
            self._fail(refusal(self._topic, self._txid, failure, refused.when))
        if not self._copy.next_attempt() or self._copy.records is None:
            self._fail(refusal(self._topic, self._txid, failure, f"{refused.when} ({self._copy.why_not()})"))
        log.warning("%s", rewrite_line(self._topic, self._part, refused.when, failure, self._copy))
        self._failure, self._manifest_end = None, None
        self._begin()
        for value, key in self._copy.records:
            self._produce(self._topic, value, key, "producing")
        self._serve(0)

    def _commit(self) -> None:
        """Manifest and commit of the open transaction, if any; written again if it goes abortable."""
        if self._stopped is not None:
            raise KafkaSinkError(self._stopped)
        while self._in_txn:
            guarded(self._finish, self._rewrite)

    def _finish(self) -> None:
        self._manifest_end = None
        for value in manifest_values(self._part, self._next_seq, self._units):
            self._produce(self._control, value, self._key, "writing the manifest", self._control_partition)
        deadline = time.monotonic() + self._txn_timeout_s + 30
        while len(self._producer) and time.monotonic() < deadline:
            self._serve(0.5)
        self._serve(0)
        while True:
            try:
                self._producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                break
            except KafkaException as exc:
                error = error_of(exc)
                if error.retriable() and time.monotonic() < deadline:
                    continue
                failure = self._note(error)
                if not abortable(failure) and error.txn_requires_abort():
                    # Frees the broker's partitions for readers now, not at the transaction timeout.
                    abort(self._producer, 10)
                self._refused(failure, "committing the epoch")
        if self._manifest_end is None:  # the commit succeeded, so did the manifest: its report is in
            self._fail(f"Kafka output topic {self._topic}: the manifest's delivery report is missing (a bug)")
        self._position = self._manifest_end
        self._next_seq += 1
        self._in_txn = False
        self._units = {}
        self._copy.clear()

    def snapshot(self) -> dict:
        self._commit()
        self._passed.clear()
        return CommitState(self._namespace, self._next_seq, self._position, self._fence.units()).to_snapshot()

    def close(self) -> None:
        # The end of a bounded run: what is still open commits; a resume fences it by reading back.
        self._commit()


class KafkaTxSink(FixedPartitionedSink[OutputRecord, dict]):
    """Writes `(routing_key(record), record)` items to `topic`, exactly once for read_committed readers.

    `namespace`: the run namespace of partitions that restore no state (the recovery
    store's, connectors/recovery_store/namespace.py); `job`: part of every transactional.id;
    `partitions`: how many sink partitions (each a producer and a transaction per epoch);
    `client_config`: librdkafka properties (security, KAFKA_PROPERTY_*)."""

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        client_config: dict[str, Any] | None = None,
        *,
        job: str = "",
        namespace: str = "",
        partitions: int = 4,
        start_timeout_s: float = 60.0,
    ) -> None:
        if partitions < 1:
            msg = f"Kafka output topic {topic}: {partitions} sink partitions: use at least 1"
            raise ValueError(msg)
        self.bootstrap = ",".join(brokers)
        self.topic = topic
        self.client_config = dict(client_config or {})
        self.job = job
        self.namespace = namespace
        self.partitions = partitions
        self.start_timeout_s = start_timeout_s
        self._batch_bytes: int | None = None

    def list_parts(self) -> list[str]:
        # Zero-padded: bytewax routes `part_fn(key) % n` into the names sorted as strings.
        width = max(2, len(str(self.partitions - 1)))
        return [f"p{i:0{width}d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    @property
    def batch_bytes(self) -> int:
        assert self._batch_bytes is not None, "set by build_part"
        return self._batch_bytes

    def build_part(self, step_id: str, for_part: str, resume_state: dict | None) -> _TxPartition:
        if self._batch_bytes is None:  # once per worker
            try:
                # A partition may be built mid-run, during a broker outage: wait for it as its start does.
                wait_s, config = self.start_timeout_s, self.client_config
                ensure_control_topic(self.bootstrap, config, control_topic(self.topic), self.partitions, wait_s)
                topic_max = topic_max_message_bytes(self.bootstrap, config, self.topic, wait_s)
            except KafkaSinkError as exc:
                log.error("%s", exc)
                raise
            wanted = int(self.client_config.get("batch.size", PRODUCER_BATCH_BYTES))
            self._batch_bytes = max(1, min(wanted, record_limit(topic_max, PRODUCER_MESSAGE_MAX_BYTES)))
        state = CommitState.from_snapshot(resume_state, self.namespace)
        return _TxPartition(self, step_id, for_part, state)
