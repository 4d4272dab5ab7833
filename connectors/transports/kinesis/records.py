"""What the Kinesis sink puts on the wire, and how it cuts PutRecords calls: pure functions.

A Kinesis record has only data and a partition key. The partition key stays the job's
key (it routes the key's records to one shard, in order), so the record's id goes into
the data: every value is a JSON object, and the sink adds `"outputId"` as its first
field, `{"outputId":"<id>", ...the value's fields}`. Readers that parse JSON see one
field more (camelCase like the jobs' own; named so that a user's own `id` field cannot
clash); a reader can drop a record whose `outputId` it has seen. The id is the record's
unit (connectors/sinks/fence.py), with `#<n>` appended for the n-th further record of
the same unit in an epoch, so that every record has its own id, provided a unit's
records share one key (they then go through one sink partition, which numbers them).

Why not elsewhere: a prefix before the JSON would break every reader's parser; the
partition key (with ExplicitHashKey to keep the routing) would take away the key users
read; a JSON field is what Flink users add themselves for idempotent readers.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from connectors.errors import WaxstreamsError

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data + partition key, as Kinesis counts them
MAX_KEY_CHARS = 256
MAX_ID_CHARS = 1024  # a booking alert's id names two positions of up to 278 characters each

ID_FIELD = "outputId"
_ID_PREFIX = b'{"' + ID_FIELD.encode() + b'":"'
# What the envelope adds to a value at most: `"outputId":"<id>",` (the value's "{" is reused).
ENVELOPE_BYTES = len(_ID_PREFIX) - 1 + MAX_ID_CHARS + 2
# Printable ASCII without '"' and '\': the id is its own JSON string, no escaping.
_ID = re.compile(r"[ !#-\[\]-~]{1," + str(MAX_ID_CHARS) + "}")
_NAMESPACE_TIME = re.compile(r"(\d{8}T\d{6}Z)-")


class KinesisSinkError(WaxstreamsError, RuntimeError):
    """A record cannot be written (too big, refused, or still failing after the retry budget); one line."""


def max_record_bytes() -> int:
    """The largest key + value the sink takes: 1 MiB less the envelope at its largest."""
    return MAX_RECORD_BYTES - ENVELOPE_BYTES


def record_size(key: str, data: bytes) -> int:
    """What counts against Kinesis' 1 MiB record and 5 MiB request limits: data plus UTF-8 key."""
    return len(data) + len(key.encode())


def route(key: str, partitions: int) -> int:
    """The sink partition of `key`: bytewax takes `part_fn(key) % n` (part_fn is crc32)."""
    return zlib.crc32(key.encode()) % partitions


def check_key(stream: str, key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
        shown = f"{len(key)} characters" if isinstance(key, str) else type(key).__name__
        msg = f"Kinesis partition key of {shown} for stream {stream!r}: it must be a str of 1..{MAX_KEY_CHARS}"
        raise KinesisSinkError(msg)


def envelope(stream: str, record_id: str, key: str, value: bytes) -> bytes:
    """The record's data: `value`, a JSON object, with `"outputId"` first. Raises
    KinesisSinkError (one line) for what Kinesis or a reader could not take."""
    check_key(stream, key)
    if not _ID.fullmatch(record_id):
        msg = (
            f"output id {record_id[:80]!r} for Kinesis stream {stream!r} is not 1..{MAX_ID_CHARS} printable "
            "ASCII characters without '\"' or '\\': fix the job's unit ids"
        )
        raise KinesisSinkError(msg)
    if not isinstance(value, bytes | bytearray) or not value.startswith(b"{"):
        msg = f"Kinesis sink for {stream!r} takes JSON object values (starting with '{{'), got {bytes(value[:20])!r}"
        raise KinesisSinkError(msg)
    if b'"' + ID_FIELD.encode() + b'"' in value and ID_FIELD in _top_level_keys(value):
        msg = f"a value for Kinesis stream {stream!r} has its own {ID_FIELD!r} field, the sink's: rename that field"
        raise KinesisSinkError(msg)
    rest = bytes(value[1:])
    separator = b"" if rest.lstrip().startswith(b"}") else b","
    data = _ID_PREFIX + record_id.encode() + b'"' + separator + rest
    size = record_size(key, data)
    if size > MAX_RECORD_BYTES:
        msg = (
            f"Kinesis record of {size} bytes (data with its {ID_FIELD} + key) for stream {stream!r} is over the "
            f"1 MiB limit: records over max_record_bytes ({max_record_bytes()}) must go to the dead letters"
        )
        raise KinesisSinkError(msg)
    return data


def _top_level_keys(value: bytes) -> Iterable[str]:
    try:
        parsed = json.loads(value)
    except ValueError:
        return ()
    return parsed.keys() if isinstance(parsed, dict) else ()


def record_id(data: bytes) -> str | None:
    """The id of a record the sink wrote, or None (a record of another writer)."""
    if not data.startswith(_ID_PREFIX):
        return None
    end = data.find(b'"', len(_ID_PREFIX))
    return data[len(_ID_PREFIX) : end].decode("ascii", "replace") if end > 0 else None


def split_id(data: bytes) -> tuple[str | None, bytes]:
    """A record's id and the value the job made (for readers and tests); (None, data) if it has none."""
    rid = record_id(data)
    if rid is None:
        return None, data
    return rid, b"{" + data[len(_ID_PREFIX) + len(rid) + 1 :].removeprefix(b",")


class RecordIds:
    """Per epoch, the ids of a unit's records: the unit, then `unit#1`, `unit#2`... A unit is
    emitted whole by one step call, so within one epoch, and in the same order on a replay."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next(self, unit: str) -> str:
        n = self._seen.get(unit, 0)
        self._seen[unit] = n + 1
        return unit if n == 0 else f"{unit}#{n}"

    def epoch_done(self) -> None:
        self._seen.clear()


def namespace_start_ms(namespace: str) -> int | None:
    """When a run namespace (recovery_store.new_namespace: `%Y%m%dT%H%M%SZ-<hex>`) was made, in
    epoch ms; None for a name without a time (the legacy namespace, a caller's own)."""
    match = _NAMESPACE_TIME.match(namespace)
    if match is None:
        return None
    return int(datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp() * 1000)


def later(a: str | None, b: str) -> str:
    """The later of two sequence numbers (decimal strings of up to 128 digits)."""
    return b if a is None or int(b) > int(a) else a


@dataclass(frozen=True, slots=True)
class Pending:
    """A record not yet confirmed by Kinesis."""

    id: str
    key: str
    data: bytes

    @property
    def size(self) -> int:
        return record_size(self.key, self.data)


class Queues:
    """Records waiting to be sent, per partition key in order. A call takes at most one record of
    a key, and a key's next record waits until the one before is confirmed: PutRecords does not
    keep order across a partial failure, so two records of a key never share a call."""

    def __init__(self, records: Iterable[Pending] = ()) -> None:
        self._keys: OrderedDict[str, deque[Pending]] = OrderedDict()
        for record in records:
            self._keys.setdefault(record.key, deque()).append(record)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return sum(len(q) for q in self._keys.values())

    def next_call(self) -> list[Pending]:
        """The head record of each key, in the order keys first arrived, up to 500 records and 5 MiB."""
        call: list[Pending] = []
        size = 0
        for queue in self._keys.values():
            head = queue[0]
            if call and (len(call) >= MAX_RECORDS_PER_CALL or size + head.size > MAX_BYTES_PER_CALL):
                break
            call.append(head)
            size += head.size
        return call

    def confirmed(self, record: Pending) -> None:
        queue = self._keys[record.key]
        if queue[0] is not record:
            msg = f"record {record.id!r} confirmed out of its key's order"
            raise AssertionError(msg)
        queue.popleft()
        if not queue:
            del self._keys[record.key]
