import json
import pickle
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng import parse as parse_jsonpath

from dataflows.booking_rules import (
    CREATED,
    DEFAULT_CREATED,
    DEFAULT_EVENT,
    EMPTY,
    EVENT,
    Alert,
    BookingRecord,
    BookingState,
    Dropped,
    SideSchema,
    Unmatched,
    advance,
    correlate,
    decode_booking,
    next_deadline,
    parse_field_spec,
    plain_keys,
    read_booking_batch,
)
from dataflows.dead_letters import DeadLetter
from dataflows.event_time import NO_WATERMARK
from dataflows.untrusted_json import InvalidEvent
from tests.support.factories import batch_of, kafka_message

T = 60_000  # timeout
t0 = 1_546_845_718_557


def created(ts: int = t0, booking: str = "b-1") -> BookingRecord:
    return BookingRecord(
        booking, CREATED, ts, {"customerId": "c-7", "amount": 120.5, "currency": "EUR", "createdAt": ts}
    )


def event(ts: int = t0 + 443, booking: str = "b-1") -> BookingRecord:
    return BookingRecord(booking, EVENT, ts, {"eventType": "PAYMENT_CONFIRMED", "timestamp": ts})


def run(records: list[BookingRecord], watermark_after: int | None = None) -> tuple[list, BookingState]:
    state, outcomes = EMPTY, []
    for record in records:
        out, state = correlate(state, record, T)
        outcomes += out
    if watermark_after is not None:
        out, state = advance(state, watermark_after, T)
        outcomes += out
    return outcomes, state


@pytest.mark.parametrize("order", [[created(), event()], [event(), created()]])
def test_either_order_gives_one_identical_alert(order: list[BookingRecord]) -> None:
    outcomes, state = run(order)
    assert outcomes == [Alert(created(), event())]
    assert json.loads(outcomes[0].to_json()) == {
        "bookingId": "b-1",
        "customerId": "c-7",
        "amount": 120.5,
        "currency": "EUR",
        "createdAt": t0,
        "eventType": "PAYMENT_CONFIRMED",
        "timestamp": t0 + 443,
        "gapMs": 443,
    }
    assert state.pending is None and state.settled_until == t0 + 443 + T


def test_repeats_after_correlation_are_dropped_and_state_ends_after_one_timeout() -> None:
    outcomes, state = run([created(), event(), event(), created()])
    assert [type(o) for o in outcomes] == [Alert, Dropped, Dropped]
    out, state = advance(state, t0 + 443 + T, T)  # exactly at the horizon: still remembered
    assert out == [] and not state.is_empty()
    out, state = advance(state, t0 + 443 + T + 1, T)
    assert out == [] and state.is_empty()  # gone: bounded memory


def test_repeat_of_the_pending_side_is_dropped() -> None:
    outcomes, state = run([created(), created()])
    assert [type(o) for o in outcomes] == [Dropped] and state.pending == created()


@pytest.mark.parametrize(("gap", "matches"), [(T, True), (T + 1, False), (-T, True), (-T - 1, False)])
def test_timeout_boundary_in_either_order(gap: int, matches: bool) -> None:
    for order in ([created(), event(t0 + gap)], [event(t0 + gap), created()]):
        outcomes, _ = run(order)
        if matches:
            assert outcomes == [Alert(created(), event(t0 + gap))]
        else:
            earlier = min(order, key=lambda r: r.timestamp)
            assert [(type(o), o.record) for o in outcomes] == [
                (Unmatched, earlier),
                (Dropped, max(order, key=lambda r: r.timestamp)),
            ]


@pytest.mark.parametrize("side", [created(), event()])
def test_one_sided_booking_times_out_exactly_after_the_timeout(side: BookingRecord) -> None:
    _, state = run([side])
    assert next_deadline(state, T) == side.timestamp + T
    out, state = advance(state, side.timestamp + T, T)  # watermark at the deadline: still waiting
    assert out == []
    out, state = advance(state, side.timestamp + T + 1, T)
    assert out == [Unmatched(side, f"no counterpart within {T} ms")]
    assert json.loads(out[0].to_json())["seen"] == side.side
    late_counterpart = event(side.timestamp + T + 5) if side.side == CREATED else created(side.timestamp + T + 5)
    dropped, state = correlate(state, late_counterpart, T)  # after the timeout: no alert
    assert [type(o) for o in dropped] == [Dropped]


def test_arrival_order_does_not_change_the_outcome_beyond_the_timeout() -> None:
    """Timed out by the watermark first, or seen together: same records out."""
    late_event = event(t0 + T + 10)
    via_timeout, _ = run([created()], watermark_after=t0 + T + 1)
    rest, _ = correlate(advance(run([created()])[1], t0 + T + 1, T)[1], late_event, T)
    together, _ = run([late_event, created()])
    assert [o.record for o in via_timeout + rest] == [o.record for o in together]


def test_an_unmatched_record_says_the_same_however_its_timeout_was_noticed() -> None:
    """Watermark first, counterpart beyond the timeout first, or the end of input: one record, byte for byte
    (a replay with another arrival order must write what the first run wrote)."""
    late_event = event(t0 + T + 10)
    by_watermark, _ = advance(run([created()])[1], t0 + T + 1, T)
    by_counterpart, _ = run([created(), late_event])
    by_counterpart_first, _ = run([late_event, created()])
    want = json.dumps(
        {
            "bookingId": "b-1",
            "seen": CREATED,
            "timestamp": t0,
            "fields": {"customerId": "c-7", "amount": 120.5, "currency": "EUR", "createdAt": t0},
            "reason": f"no counterpart within {T} ms",
        },
        sort_keys=True,
    ).encode()
    for outcomes in (by_watermark, by_counterpart, by_counterpart_first):
        assert [o.to_json() for o in outcomes if isinstance(o, Unmatched)] == [want]


def test_outcomes_are_named_by_the_input_positions_that_settled_them() -> None:
    c = BookingRecord("b-1", CREATED, t0, {}, position="created:0:17")
    e = BookingRecord("b-1", EVENT, t0 + 5, {}, position="events:1:4")
    for order in ([c, e], [e, c]):
        (alert,), _ = run(order)
        assert alert.unit == "alert:created:0:17+events:1:4"
    (unmatched,), _ = advance(run([c])[1], t0 + T + 1, T)
    assert unmatched.unit == "unmatched:created:0:17"


def test_batch_reading_stamps_each_record_with_its_input_position() -> None:
    message = kafka_message(json.dumps({"bookingId": "b-9", "timestamp": t0, "eventType": "X"}).encode(), offset=42)
    (record,), _ = read_booking_batch(
        "0-events",
        batch_of([message]),
        NO_WATERMARK,
        schemas={message.topic(): DEFAULT_EVENT},
        max_out_of_orderness_ms=0,
    )
    assert record.position == f"{message.topic()}:{message.partition()}:42"


def test_a_booking_record_stored_before_positions_existed_still_loads() -> None:
    """Keyed state is pickled: a record stored without the newest field comes back with its default."""
    record = created()
    old = BookingRecord.__new__(BookingRecord)
    old.__setstate__([getattr(record, f) for f in ("booking_id", "side", "timestamp", "fields", "source")])
    assert old == replace(record, source_watermark=0, position="")
    assert pickle.loads(pickle.dumps(record)) == record


def test_id_reused_long_after_settlement_is_a_new_booking() -> None:
    outcomes, _ = run([created(), event(), created(t0 + 10 * T), event(t0 + 10 * T + 1)])
    assert [type(o) for o in outcomes] == [Alert, Alert]


def test_decode_with_default_and_custom_jsonpath() -> None:
    raw = b'{"bookingId": "b-1", "customerId": "c-7", "amount": 120.50, "currency": "EUR", "createdAt": 1546845718557}'
    assert decode_booking(raw, DEFAULT_CREATED) == created()
    nested = SideSchema(EVENT, "$.booking.id", "$.meta.ts", parse_field_spec("eventType=$.type,source=$.meta.src"))
    record = decode_booking(b'{"booking": {"id": 7}, "type": "X", "meta": {"ts": 1546845718557, "src": "web"}}', nested)
    assert record == BookingRecord("7", EVENT, 1546845718557, {"eventType": "X", "source": "web"})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"eventType": "X", "timestamp": 1546845718557}', r"missing id \(\$.bookingId\)"),
        (b'{"bookingId": "", "eventType": "X", "timestamp": 1546845718557}', r"booking id \(\$.bookingId\) is empty"),
        (b'{"bookingId": "b", "eventType": "X"}', r"missing time \(\$.timestamp\)"),
        (b'{"bookingId": "b", "eventType": "X", "timestamp": "soon"}', "integer epoch milliseconds"),
        (b'{"bookingId": "b", "timestamp": 1546845718557}', r"missing eventType \(\$.eventType\)"),
    ],
)
def test_decode_rejects_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_booking(raw, DEFAULT_EVENT)


_KEYS = st.sampled_from(["a", "b", "id", "a-b"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
_PATHS = st.lists(_KEYS, min_size=1, max_size=3).map(
    lambda keys: "$" + "".join(f".{k}" for k in keys)
) | st.sampled_from(["$['a']", "$.a['b']", "$.*", "$.a.*", "$..a", "$.a[0]", "$"])


@settings(max_examples=400)
@given(obj=st.dictionaries(_KEYS, _JSON, max_size=4), path=_PATHS)
def test_a_field_path_finds_what_jsonpath_ng_finds(obj: dict, path: str) -> None:
    # The reference is jsonpath_ng itself: its first match's value, or missing.
    matches = parse_jsonpath(path).find(obj)
    schema = SideSchema(EVENT, path, "$.ts", {})
    if matches:
        assert schema.extract(obj, "@id") == matches[0].value
    else:
        with pytest.raises(InvalidEvent, match="missing id"):
            schema.extract(obj, "@id")


@pytest.mark.parametrize(
    ("path", "keys"),
    [("$.a", ("a",)), ("$.a.b", ("a", "b")), ("$['a'].b", ("a", "b")), ("$.*", None), ("$..a", None), ("$.a[0]", None)],
)
def test_only_paths_of_plain_fields_skip_jsonpath_ng(path: str, keys: tuple[str, ...] | None) -> None:
    assert plain_keys(parse_jsonpath(path)) == keys


@pytest.mark.parametrize("spec", ["a", "=$.x", "a=", "a=$.[["])
def test_bad_field_spec_is_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"name=JSONPath|invalid JSONPath"):
        SideSchema(EVENT, "$.id", "$.ts", parse_field_spec(spec))


def test_batch_reading_picks_schema_by_topic_and_stamps_the_partition_watermark() -> None:
    messages = [
        kafka_message(json.dumps({"bookingId": "b", "eventType": "X", "timestamp": t0}).encode(), topic="ev"),
        kafka_message(b"nope", offset=1, topic="ev"),
        kafka_message(json.dumps({"bookingId": "b", "eventType": "Y", "timestamp": t0 + 5000}).encode(), 2, topic="ev"),
    ]
    items, newest = read_booking_batch(
        "0-ev",
        batch_of(messages),
        NO_WATERMARK,
        schemas={"ev": DEFAULT_EVENT, "cr": DEFAULT_CREATED},
        max_out_of_orderness_ms=1000,
    )
    assert newest == t0 + 5000
    assert [type(i) for i in items] == [DeadLetter, BookingRecord, BookingRecord]
    assert {(i.source, i.source_watermark) for i in items[1:]} == {("0-ev", t0 + 4000)}
