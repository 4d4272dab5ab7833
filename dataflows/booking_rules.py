"""Booking correlation: records, their decoding, and the correlation rules (pure).

Rules, all in event time, so results do not depend on arrival order or speed:
- a booking matches when both sides are seen and their timestamps are at most
  `timeout` apart: one alert, whichever side came first;
- a side whose counterpart is not seen by then is unmatched: reported once, when
  the watermark passes its timestamp + timeout (or at once if the counterpart
  arrives beyond the timeout; the later record is then dropped). What an outcome
  says is decided by event time alone, never by how the timeout was noticed, so a
  replay or another arrival order writes the same bytes;
- after a booking is settled (alerted or unmatched) its id is remembered for one
  more timeout: repeats with timestamps inside that horizon are dropped; later
  records with the same id start afresh; then the state is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng import parse as parse_jsonpath
from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.jsonpath import Child, Fields, Root

from connectors.transports.batch import RecordBatch
from dataflows.dead_letters import DeadLetter, rejected
from dataflows.event_time import partition_watermark
from dataflows.untrusted_json import InvalidEvent, decode_json_object, event_time_value, id_value

CREATED, EVENT = "created", "event"


@dataclass(frozen=True)
class SideSchema:
    """Where a side's id, event time and carried values are, as JSONPath expressions."""

    side: str
    id_path: str
    time_path: str
    fields: dict[str, str]  # output name -> JSONPath
    _compiled: dict[str, JSONPath] = field(init=False, repr=False, compare=False)
    _keys: dict[str, tuple[str, ...] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = {}
        for name, expression in {"@id": self.id_path, "@time": self.time_path, **self.fields}.items():
            try:
                compiled[name] = parse_jsonpath(expression)
            except (JsonPathParserError, Exception) as exc:
                msg = f"invalid JSONPath {expression!r} for {self.side} {name.lstrip('@')}: {exc}"
                raise ValueError(msg) from None
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_keys", {name: plain_keys(path) for name, path in compiled.items()})

    def extract(self, obj: Any, name: str) -> Any:
        keys = self._keys[name]
        if keys is None:
            matches = self._compiled[name].find(obj)
            found = matches[0].value if matches else _MISSING
        else:  # what jsonpath_ng finds for such a path, a dict lookup per key (about 10 x faster)
            found = obj
            for key in keys:
                found = found.get(key, _MISSING) if isinstance(found, dict) else _MISSING
        if found is _MISSING:
            path = {"@id": self.id_path, "@time": self.time_path}.get(name) or self.fields[name]
            raise InvalidEvent(f"missing {name.lstrip('@')} ({path})")
        return found


_MISSING: Any = object()


def plain_keys(path: JSONPath) -> tuple[str, ...] | None:
    """The keys of a parsed path that names one field after another from the root (`$.a.b`,
    `$['a']`), else None (wildcards, indices, filters: jsonpath_ng finds those)."""
    keys: list[str] = []
    while isinstance(path, Child) and type(path.right) is Fields and len(path.right.fields) == 1:
        (key,) = path.right.fields
        if key == "*":  # jsonpath_ng's every-field wildcard
            return None
        keys.append(key)
        path = path.left
    return tuple(reversed(keys)) if type(path) is Root and keys else None


def parse_field_spec(spec: str) -> dict[str, str]:
    """`name=$.path,name2=$.path2` -> {name: path}."""
    fields = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            msg = f"{part!r} is not name=JSONPath"
            raise ValueError(msg)
        fields[name.strip()] = path.strip()
    return fields


DEFAULT_CREATED = SideSchema(
    CREATED,
    "$.bookingId",
    "$.createdAt",
    parse_field_spec("customerId=$.customerId,amount=$.amount,currency=$.currency,createdAt=$.createdAt"),
)
DEFAULT_EVENT = SideSchema(
    EVENT, "$.bookingId", "$.timestamp", parse_field_spec("eventType=$.eventType,timestamp=$.timestamp")
)


@dataclass(frozen=True, slots=True)
class BookingRecord:
    booking_id: str
    side: str
    timestamp: int  # epoch ms
    fields: dict[str, Any]
    source: str = ""  # input partition, and its watermark after the batch (see event_time.py)
    source_watermark: int = 0
    position: str = ""  # where it was read ("topic:partition:offset"): names the outcome it settles

    def __setstate__(self, state: list[Any]) -> None:
        # States stored before a field was added lack it: it takes its default.
        for i, f in enumerate(fields(self)):
            object.__setattr__(self, f.name, state[i] if i < len(state) else f.default)


def decode_booking(raw: bytes | None, schema: SideSchema) -> BookingRecord:
    obj = decode_json_object(raw)
    booking_id = id_value(schema.extract(obj, "@id"), f"booking id ({schema.id_path})")
    ts = event_time_value(schema.extract(obj, "@time"), f"time ({schema.time_path})")
    values = {name: schema.extract(obj, name) for name in schema.fields}
    return BookingRecord(booking_id, schema.side, ts, values)


@dataclass(frozen=True, slots=True)
class Alert:
    created: BookingRecord
    event: BookingRecord

    @property
    def unit(self) -> str:
        return f"alert:{self.created.position}+{self.event.position}"

    def to_json(self) -> bytes:
        record = {
            "bookingId": self.created.booking_id,
            **self.created.fields,
            **self.event.fields,
            "gapMs": self.event.timestamp - self.created.timestamp,
        }
        return json.dumps(record, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Unmatched:
    record: BookingRecord
    reason: str

    @property
    def unit(self) -> str:
        return f"unmatched:{self.record.position}"

    def to_json(self) -> bytes:
        r = self.record
        body = {
            "bookingId": r.booking_id,
            "seen": r.side,
            "timestamp": r.timestamp,
            "fields": r.fields,
            "reason": self.reason,
        }
        return json.dumps(body, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Dropped:
    record: BookingRecord
    reason: str


Outcome = Alert | Unmatched | Dropped


@dataclass(frozen=True, slots=True)
class BookingState:
    pending: BookingRecord | None = None
    settled_until: int | None = None  # event time up to which repeats are dropped

    def is_empty(self) -> bool:
        return self.pending is None and self.settled_until is None


EMPTY = BookingState()


def correlate(state: BookingState, record: BookingRecord, timeout_ms: int) -> tuple[list[Outcome], BookingState]:
    """Apply one arriving record to a booking's state."""
    if state.settled_until is not None:
        if record.timestamp <= state.settled_until:
            return [Dropped(record, "booking already settled")], state
        state = EMPTY  # the id is used again, long after: a new booking
    pending = state.pending
    if pending is None:
        return [], BookingState(pending=record)
    if pending.side == record.side:
        return [Dropped(record, f"repeated {record.side} record")], state
    earlier, later = sorted((pending, record), key=lambda r: (r.timestamp, r.side))
    if later.timestamp - earlier.timestamp <= timeout_ms:
        created, event = (pending, record) if pending.side == CREATED else (record, pending)
        return [Alert(created, event)], BookingState(settled_until=later.timestamp + timeout_ms)
    outcomes: list[Outcome] = [Unmatched(earlier, no_counterpart(timeout_ms))]
    horizon = earlier.timestamp + 2 * timeout_ms
    if later.timestamp <= horizon:
        outcomes.append(Dropped(later, "counterpart beyond the timeout"))
        return outcomes, BookingState(settled_until=horizon)
    return outcomes, BookingState(pending=later)


def no_counterpart(timeout_ms: int) -> str:
    """The one reason of every unmatched record: whether the watermark, a counterpart
    beyond the timeout or the end of input noticed it first depends on arrival order."""
    return f"no counterpart within {timeout_ms} ms"


def advance(state: BookingState, watermark: int, timeout_ms: int) -> tuple[list[Outcome], BookingState]:
    """Apply the watermark: time out a pending side, forget a settled id."""
    outcomes: list[Outcome] = []
    if state.pending is not None and watermark > state.pending.timestamp + timeout_ms:
        outcomes.append(Unmatched(state.pending, no_counterpart(timeout_ms)))
        state = BookingState(settled_until=state.pending.timestamp + 2 * timeout_ms)
    if state.settled_until is not None and watermark > state.settled_until:
        state = replace(state, settled_until=None)
    return outcomes, state


def next_deadline(state: BookingState, timeout_ms: int) -> int | None:
    """The event time the watermark must pass for `advance` to change the state."""
    if state.pending is not None:
        return state.pending.timestamp + timeout_ms
    return state.settled_until


def read_booking_batch(
    source: str,
    batch: RecordBatch,
    max_timestamp: int,
    *,
    schemas: dict[str, SideSchema],
    max_out_of_orderness_ms: int,
) -> tuple[list[BookingRecord | DeadLetter], int]:
    """Decode one input partition's batch (schema chosen by topic) and stamp its watermark."""
    out: list[BookingRecord | DeadLetter] = []
    records = []
    for i, raw in enumerate(batch.value_list()):
        try:
            record = decode_booking(raw, schemas[batch.stream])
        except Exception as exc:  # the record boundary: see dead_letters.rejected
            out.append(rejected(batch, i, exc))
            continue
        max_timestamp = max(max_timestamp, record.timestamp)
        stream, partition, offset = batch.position(i)
        records.append((record, f"{stream}:{partition}:{offset}"))
    watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
    # Made whole here, one constructor call each (dataclasses.replace is several times slower).
    out.extend(
        BookingRecord(
            r.booking_id, r.side, r.timestamp, r.fields, source=source, source_watermark=watermark, position=position
        )
        for r, position in records
    )
    return out, max_timestamp
