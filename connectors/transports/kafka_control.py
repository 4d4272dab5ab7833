"""The Kafka sink's control topic and the pure pieces of its protocol (connectors/transports/kafka_sink.py):
manifests, what a read-back fences, record limits, and the one line for each refusal.

Each sink partition commits one transaction per epoch; in it, beside the epoch's
records, go one or more *manifest* records into the output topic's control topic
`<topic>.waxstreams-commits` (a partition per sink partition), keyed by its transactional id,
naming the transaction's sequence number and the units it holds. A resume reads the
control partition back (read_committed) from its stored position and fences the units
of its own manifests past its stored sequence.

One control topic per output topic, not per job: a prefixed ACL on the output topic's
name (what a user grants the job for `alerts`) covers `alerts.waxstreams-commits` too,
a read-back reads only the manifests of that output, and jobs sharing an output topic
share its control topic without coordination (manifests are keyed by transactional id).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from connectors.errors import WaxstreamsError

log = logging.getLogger(__name__)

CONTROL_SUFFIX = ".waxstreams-commits"
MANIFEST_VERSION = 1
# A manifest record's units, as JSON: well under the 1 MB a default topic takes.
MANIFEST_PIECE_BYTES = 256 * 1024
# Under a topic's max.message.bytes: a record batch header (61 bytes), the record's own
# varint framing and a few headers.
RECORD_OVERHEAD_BYTES = 512
PRODUCER_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
PRODUCER_BATCH_BYTES = 1_000_000  # librdkafka's batch.size default
# Manifests of a fresh partition are looked for from its namespace's creation time less
# this (clocks of the pods that made the namespace and wrote the manifests may differ).
NAMESPACE_CLOCK_SKEW_MS = 3_600_000


class KafkaSinkError(WaxstreamsError, RuntimeError):
    """An output record was refused or the sink cannot start; the message is one line naming the fix."""


def control_topic(topic: str) -> str:
    return f"{topic}{CONTROL_SUFFIX}"


def transactional_id(job: str, step_id: str, namespace: str, part: str) -> str:
    return f"waxstreams.{job}.{step_id}.{namespace}.{part}"


def manifest_values(part: str, seq: int, units: Iterable[str], piece_bytes: int = MANIFEST_PIECE_BYTES) -> list[bytes]:
    """The manifest of transaction `seq` as JSON records, the unit list cut so that each stays
    near `piece_bytes`. Always at least one record (a transaction with no unit ids still says
    its seq)."""
    pieces: list[list[str]] = [[]]
    size = 0
    for unit in units:
        cost = len(unit.encode()) + 4  # quotes, comma, slack for escapes
        if pieces[-1] and size + cost > piece_bytes:
            pieces.append([])
            size = 0
        pieces[-1].append(unit)
        size += cost
    return [
        json.dumps(
            {"v": MANIFEST_VERSION, "part": part, "seq": seq, "piece": i, "pieces": len(pieces), "units": chunk},
            separators=(",", ":"),
        ).encode()
        for i, chunk in enumerate(pieces)
    ]


@dataclass(frozen=True)
class Manifest:
    seq: int
    units: list[str]


def parse_manifest(value: bytes) -> Manifest:
    doc = json.loads(value)
    return Manifest(int(doc["seq"]), [str(u) for u in doc["units"]])


def committed_past(manifests: Iterable[Manifest], next_seq: int) -> tuple[set[str], int]:
    """The units of the manifests at or past `next_seq`, and the next seq after all manifests seen."""
    units: set[str] = set()
    last = next_seq - 1
    for manifest in manifests:
        if manifest.seq >= next_seq:
            units.update(manifest.units)
        last = max(last, manifest.seq)
    return units, last + 1


_NAMESPACE_TIME = re.compile(r"(\d{8}T\d{6}Z)-")


def namespace_time_ms(namespace: str) -> int | None:
    """When a run namespace (connectors/recovery_store/namespace.py) was made, in epoch ms."""
    found = _NAMESPACE_TIME.match(namespace)
    if found is None:
        return None
    made = datetime.strptime(found.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return int(made.timestamp() * 1000)


def record_limit(topic_max_message_bytes: int, producer_message_max_bytes: int) -> int:
    """The largest key + value a topic takes from our producer."""
    return min(topic_max_message_bytes, producer_message_max_bytes) - RECORD_OVERHEAD_BYTES


_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
_NOT_AUTHORISED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}
_OUTAGE = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
_NO_TRANSACTIONS = {
    KafkaError._UNSUPPORTED_FEATURE,
    KafkaError.UNSUPPORTED_VERSION,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
}
INIT_STEP = "starting its transactions (init_transactions)"
_REPLAY = "the restart replays it from the last snapshot"


def error_of(exc: KafkaException) -> KafkaError:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def refusal(topic: str, txid: str, error: KafkaError, when: str) -> str:
    """One line for an output refused by Kafka: the output topic, the cause and the fix."""
    code = error.code()
    what = f"Kafka output topic {topic}: {when} failed ({error.str()})"
    if code in _FENCED:
        return (
            f"{what}: a newer producer with transactional.id {txid} took over (another instance of this job "
            "with the same recovery store is running, or this one was restarted): run one instance per "
            f"recovery store; {_REPLAY}"
        )
    if code in _NOT_AUTHORISED:
        return (
            f"{what}: not authorised: grant the job WRITE and DESCRIBE on topics {topic} and "
            f"{control_topic(topic)}, WRITE and DESCRIBE on transactional ids with prefix 'waxstreams.', "
            f"and IDEMPOTENT_WRITE on the cluster (brokers before 2.8); {_REPLAY}"
        )
    if when == INIT_STEP and code in _OUTAGE | _NO_TRANSACTIONS:
        return (
            f"{what}: no transaction coordinator answered: the brokers are unreachable, or do not offer "
            "transactions, which exactly-once output needs (Kafka >= 2.5, transaction.state.log.replication.factor "
            "and transaction.state.log.min.isr no larger than the number of brokers): fix KAFKA_BROKERS or the "
            "brokers' settings"
        )
    if code in _OUTAGE:
        return (
            f"{what}: Kafka did not take the epoch's records within message.timeout.ms / transaction.timeout.ms "
            f"(broker down or unreachable): bring it back, or raise KAFKA_PROPERTY_MESSAGE__TIMEOUT__MS and "
            f"KAFKA_PROPERTY_TRANSACTION__TIMEOUT__MS to ride out longer outages; {_REPLAY}"
        )
    if code in _NO_TRANSACTIONS:
        return (
            f"{what}: the brokers do not offer transactions, which exactly-once output needs: use Kafka >= 2.5 "
            "with transaction.state.log.replication.factor and transaction.state.log.min.isr no larger than "
            "the number of brokers"
        )
    if code == KafkaError.INVALID_TRANSACTION_TIMEOUT:
        return (
            f"{what}: transaction.timeout.ms is above the broker's transaction.max.timeout.ms: lower "
            "KAFKA_PROPERTY_TRANSACTION__TIMEOUT__MS (it must still exceed the epoch interval)"
        )
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return f"{what}: a record is larger than the topic takes (max.message.bytes): raise it on the topic; {_REPLAY}"
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
        return f"{what}: the topic does not exist: create {topic} (and {control_topic(topic)}); {_REPLAY}"
    return f"{what}: check the brokers and the job's Kafka settings; {_REPLAY}"


# -- I/O --------------------------------------------------------------------------------------


def _admin(bootstrap: str, config: dict[str, Any]) -> AdminClient:
    return AdminClient({**config, "bootstrap.servers": bootstrap, "log_level": 3})


def topic_max_message_bytes(bootstrap: str, config: dict[str, Any], topic: str, timeout: float = 30.0) -> int:
    """The topic's max.message.bytes (its own or the broker's default), from describe_configs."""
    admin = _admin(bootstrap, config)  # referenced until the answer is in: its destruction cancels it
    return ask_max_message_bytes(admin, [topic])(timeout)[topic]


def ask_max_message_bytes(admin: AdminClient, topics: Iterable[str]) -> Callable[[float], dict[str, int]]:
    """Asks `admin` for each topic's max.message.bytes (one request); the answer is waited for
    (up to the timeout given) when the returned function is called. Keep `admin` referenced
    until then: its destruction cancels the request."""
    resources = {topic: ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics}
    asked = admin.describe_configs(list(resources.values())) if resources else {}

    def answer(timeout: float) -> dict[str, int]:
        limits = {}
        for topic, resource in resources.items():
            try:
                configs = asked[resource].result(timeout=timeout)
            except KafkaException as exc:
                msg = (
                    f"Kafka output topic {topic}: cannot read its max.message.bytes ({_text(exc)}): "
                    "grant the job DESCRIBE_CONFIGS on the topic, or check that it exists"
                )
                raise KafkaSinkError(msg) from None
            limits[topic] = int(configs["max.message.bytes"].value)
        return limits

    return answer


def ensure_control_topic(
    bootstrap: str, config: dict[str, Any], topic: str, partitions: int, timeout: float = 30.0
) -> None:
    """Create the control topic (a partition per sink partition, the broker's replication
    factor) unless it exists; add partitions it lacks."""
    admin = _admin(bootstrap, config)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _grow_control_topic(admin, topic, partitions, timeout)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if time.monotonic() < deadline:  # a broker just restarted answers "fenced" for a while
                time.sleep(0.5)
                continue
            msg = (
                f"Kafka control topic {topic} is missing or has fewer than {partitions} partitions and could not "
                f"be made so ({_text(exc)}): create it ({partitions} partitions, cleanup.policy=delete, retention "
                "at least as long as a job may stay down) or grant the job CREATE and ALTER on it"
            )
            raise KafkaSinkError(msg) from None


def _grow_control_topic(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    have = _partitions(admin, topic, timeout)
    if have >= partitions:
        return
    if have:
        admin.create_partitions([NewPartitions(topic, partitions)], request_timeout=timeout)[topic].result(timeout)
    else:
        new = NewTopic(topic, num_partitions=partitions)
        admin.create_topics([new], request_timeout=timeout)[topic].result(timeout)
    log.info("Kafka control topic %s has %d partitions: the output's transaction manifests", topic, partitions)


def _partitions(admin: AdminClient, topic: str, timeout: float) -> int:
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    return 0 if meta is None or meta.error is not None else len(meta.partitions)


READ_BACK_WAIT_S = 0.02


def read_manifests(
    bootstrap: str,
    config: dict[str, Any],
    topic: str,
    partition: int,
    key: bytes,
    start: int | None,
    since_ms: int | None,
    timeout: float,
) -> tuple[list[Manifest], int]:
    """The committed manifests keyed `key` in the control partition, from offset `start` (None:
    from the first record at or after `since_ms`, or the beginning) to its end as of now, and
    that end (a manifest committed later is past it).

    Read with read_committed: an aborted transaction's manifest is no commit. The end is the
    partition's high watermark (read_uncommitted) taken first: another producer's open
    transaction holds read_committed reads back below it until it ends (within its
    transaction.timeout.ms), so the read waits up to `timeout` for it."""
    base = {**config, "bootstrap.servers": bootstrap, "enable.auto.commit": False, "log_level": 3}
    group = f"waxstreams-readback-{uuid.uuid4().hex[:8]}"  # assign() only: no group is joined
    probe = Consumer({**base, "group.id": group, "isolation.level": "read_uncommitted"})
    try:
        tp = TopicPartition(topic, partition)
        low, high = _watermarks(probe, tp, timeout)
        if start is None:
            start = low
            if since_ms is not None:
                at = probe.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=timeout)[0].offset
                start = at if at >= 0 else high
        elif start < low:
            log.error(
                "Kafka control topic %s: its retention removed manifests past this sink partition's snapshot "
                "(offsets %d..%d): units committed then may be written again; keep the control topic's "
                "retention longer than a job may stay down",
                topic,
                start,
                low - 1,
            )
    finally:
        probe.close()
    found: list[Manifest] = []
    if start >= high:
        return found, high
    consumer = Consumer({**base, "group.id": group, "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while True:
            # A short wait: consume() waits out its whole timeout unless the batch fills, and a
            # read back mostly finds a few manifests (a sink partition built mid-run waits on it).
            for msg in consumer.consume(1000, READ_BACK_WAIT_S):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                elif msg.key() == key and (value := msg.value()) is not None:
                    found.append(parse_manifest(value))
            position = consumer.position([tp])[0].offset
            if position >= high:
                return found, high
            if time.monotonic() > deadline:
                msg_text = (
                    f"Kafka control topic {topic}: read back only to offset {position} of {high} in {timeout:g}s: "
                    "another producer holds a transaction open on it (a crashed instance of the job: it is "
                    "aborted within its transaction.timeout.ms), or the broker is unreachable; restart the job "
                    "once it is"
                )
                raise KafkaSinkError(msg_text)
    finally:
        consumer.close()


# What a broker answers for a partition that is still being placed (a control topic just made).
# What a control partition answers while it is not ready yet, asked again until the deadline:
# a topic just created is not in the client's metadata at once ("Unknown partition"), and a
# broker too busy to answer in time drops the client's connections ("All brokers down").
NOT_READY = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
}


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    """The partition's offsets, asked again while the broker says it is not ready yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=min(timeout, 10))
            return low, high
        except KafkaException as exc:
            if error_of(exc).code() not in NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _text(exc: Exception) -> str:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
