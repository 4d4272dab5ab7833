"""The input rules, the record boundary of both jobs' batch steps, and dead-letter sizes."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import random
import weakref
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dataflows.booking_rules as bookings
from dataflows import untrusted_json
from dataflows.booking_rules import DEFAULT_CREATED, DEFAULT_EVENT, BookingRecord, read_booking_batch
from dataflows.dead_letters import MAX_DEAD_LETTER_BYTES, DeadLetter, SourcePosition
from dataflows.event_time import NO_WATERMARK
from dataflows.impressions import decode
from dataflows.impressions.decode import decode_fields, decode_impression
from dataflows.impressions.layout import object_folder
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import WindowSlice
from dataflows.metrics import EVENTS, INTERNAL_ERRORS, count_inputs
from dataflows.untrusted_json import MAX_DEPTH, MAX_ID_BYTES, InvalidEvent, decode_json_object
from tests.support.factories import batch_of, kafka_message, record_batch, tally_dict
from tests.support.hostile import MUTATIONS, hostile, odd_but_valid
from tests.support.oracles import raw_of

IMPRESSION = {"movieId": "2001", "userId": "1003", "timestamp": 1_546_845_718_557}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"movieId": "1", "movieId": "2", "userId": "u", "timestamp": 1546845718557}', "repeated key 'movieId'"),
        (b'{"movieI\\u0064": "1", "movieId": "2", "userId": "u", "timestamp": 1546845718557}', "repeated key"),
        (b'{"movieId": "1", "userId": "u", "timestamp": 1546845718557, "x": {"a": 1, "a": 1}}', "repeated key 'a'"),
        (b'{"x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", f"nested deeper than {MAX_DEPTH}"),
        (b'{"x": ' + b"[" * 50_000 + b"]" * 10 + b"}", "nested deeper|not valid JSON"),
        (b'{"movieId": "\xff"}', "not valid UTF-8"),
        (b'{"movieId": "\\ud800"}', "not valid JSON"),
        (b'\xef\xbb\xbf{"movieId": "1"}', "not valid JSON"),
        (b'{"timestamp": NaN}', "not valid JSON"),
        (b'{"x": 1e400}', "not valid JSON"),
        (b'{"x": ' + b"9" * 4_400 + b"}", "not valid JSON"),
    ],
)
def test_json_rules_reject_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_json_object(raw)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The object is level 1, so MAX_DEPTH - 1 arrays inside it reach the limit exactly.
    raw = b'{"x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert decode_json_object(raw) == json.loads(raw)


@pytest.mark.parametrize(
    ("movie_id", "reason"),
    [
        ("x" * (MAX_ID_BYTES + 1), "longer than"),
        ("\u00e9" * (MAX_ID_BYTES // 2 + 1), "longer than"),
        ("a\u0000b", "control characters"),
        ("\u009f", "control characters"),
        (" \t ", "empty"),
        (10**MAX_ID_BYTES, "longer than"),
    ],
)
def test_id_rules(movie_id: object, reason: str) -> None:
    raw = json.dumps({**IMPRESSION, "movieId": movie_id}).encode()
    with pytest.raises(InvalidEvent, match=reason):
        decode_impression(raw)
    with pytest.raises(InvalidEvent, match=reason):
        decode_fields(raw)


def test_ids_at_the_limit_are_accepted() -> None:
    for movie_id in ["x" * MAX_ID_BYTES, "\U0001f3ac" * (MAX_ID_BYTES // 4), 10**MAX_ID_BYTES - 1]:
        raw = json.dumps({**IMPRESSION, "movieId": movie_id}).encode()
        assert decode_fields(raw)[0] == str(movie_id)


@pytest.mark.parametrize(("movie_id", "folder"), [(".", "%2E"), ("..", "%2E%2E"), ("../x", "..%2Fx"), ("a.b", "a.b")])
def test_object_folder_never_yields_a_dot_segment(movie_id: str, folder: str) -> None:
    assert object_folder("p", 0, movie_id) == f"p/1970-01-01--00/{folder}"


@given(st.integers(0, 2**32), st.integers(0, 2))
@settings(max_examples=400)
def test_fast_path_agrees_with_the_full_path(seed: int, kind: int) -> None:
    """decode_fields takes shortcuts; decode_impression is the reference: same answer on anything."""
    rng = random.Random(seed)
    if kind == 0:
        _, raw = hostile(rng, IMPRESSION, "movieId", "timestamp")
    elif kind == 1:
        _, raw = odd_but_valid(rng, IMPRESSION, rng.choice(["movieId", "userId"]))
    else:
        raw = json.dumps({**IMPRESSION, "userId": str(seed)}).encode()
    try:
        want: object = decode_impression(raw)
        want = (want.movie_id, want.user_id, want.timestamp)  # type: ignore[attr-defined]
    except InvalidEvent:
        want = InvalidEvent
    try:
        got: object = decode_fields(raw)
    except InvalidEvent:
        got = InvalidEvent
    assert got == want


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_hostile_kind_is_invalid_for_both_jobs(name: str) -> None:
    rng = random.Random(name)
    created = {"bookingId": "b-1", "customerId": "c-1", "amount": 10.5, "currency": "EUR", "createdAt": 1546845718557}
    for _ in range(30):
        with pytest.raises(InvalidEvent):
            decode_fields(MUTATIONS[name](rng, IMPRESSION, "movieId", "timestamp"))
        with pytest.raises(InvalidEvent):
            bookings.decode_booking(MUTATIONS[name](rng, created, "bookingId", "createdAt"), DEFAULT_CREATED)


def _boom(*args: object) -> object:
    msg = "injected"
    raise ZeroDivisionError(msg)


def test_a_failure_of_our_own_code_is_an_internal_dead_letter_and_the_batch_goes_on(monkeypatch) -> None:
    real = decode.decode_fields
    # Keys in another order than the producers': judged alone, by decode_fields.
    poisoned = json.dumps({"userId": "poison", **IMPRESSION} | {"userId": "poison"}).encode()
    monkeypatch.setattr(decode, "decode_fields", lambda raw: _boom() if raw == poisoned else real(raw))
    values = [json.dumps(IMPRESSION).encode(), poisoned, b"{", json.dumps(IMPRESSION).encode()]
    messages = [kafka_message(v, offset=i) for i, v in enumerate(values)]
    items, _ = slice_batch("0-t", batch_of(messages), NO_WATERMARK, window_ms=900_000, max_out_of_orderness_ms=0)

    dead = {d.position.offset: d for d in items if isinstance(d, DeadLetter)}
    assert set(dead) == {1, 2}
    assert dead[1].internal and dead[1].error == "internal error: ZeroDivisionError: injected"
    assert not dead[2].internal
    assert json.loads(dead[1].to_json())["kind"] == "internal_error"
    assert json.loads(dead[2].to_json())["kind"] == "invalid"
    [piece] = [s for s in items if isinstance(s, WindowSlice)]
    assert tally_dict(piece.tallies) == {(IMPRESSION["movieId"], "1003"): (2, IMPRESSION["timestamp"])}

    before = (INTERNAL_ERRORS.labels("t")._value.get(), EVENTS.labels("t", "valid")._value.get())
    count_inputs("t", len(messages), items)
    assert INTERNAL_ERRORS.labels("t")._value.get() - before[0] == 1
    assert EVENTS.labels("t", "valid")._value.get() - before[1] == 2


def test_the_booking_batch_step_has_the_same_boundary(monkeypatch) -> None:
    monkeypatch.setattr(bookings, "decode_booking", _boom)
    messages = [kafka_message(b'{"bookingId": "b"}', offset=i, topic="events") for i in range(3)]
    items, _ = read_booking_batch(
        "0-events", batch_of(messages), NO_WATERMARK, schemas={"events": DEFAULT_EVENT}, max_out_of_orderness_ms=0
    )
    assert [(d.position.offset, d.internal) for d in items if isinstance(d, DeadLetter)] == [
        (0, True),
        (1, True),
        (2, True),
    ]
    assert not any(isinstance(i, BookingRecord) for i in items)


@pytest.mark.parametrize(
    ("raw", "exact"),
    [
        (b"\x00" * 60_000, True),  # JSON escapes make it 360 KB: fits as text
        (b"\x00" * 200_000, True),  # 1.2 MB as escaped text: fits as base64
        (b"\xff" * 600_000, True),  # 800 KB as base64
        (b"\x00" * 800_000, False),  # does not fit either way: cut, with length and digest
    ],
)
def test_a_dead_letter_fits_a_kafka_message(raw: bytes, exact: bool) -> None:
    record = DeadLetter("too big", SourcePosition("t", 0, 7), raw).to_json()
    assert len(record) <= MAX_DEAD_LETTER_BYTES
    fields = json.loads(record)
    if exact:
        assert raw_of(fields) == raw and "rawTruncated" not in fields
    else:
        assert fields["rawTruncated"] is True and fields["rawBytes"] == len(raw)
        assert fields["rawSha256"] == hashlib.sha256(raw).hexdigest()
        assert raw.startswith(base64.b64decode(fields["raw"]))


def test_a_failure_of_the_batch_path_leaves_every_record_to_the_per_record_rules(monkeypatch) -> None:
    monkeypatch.setattr(decode, "_layout_rows", _boom)
    values = [json.dumps(IMPRESSION).encode(), b"{", json.dumps(IMPRESSION).encode()]
    messages = [kafka_message(v, offset=i) for i, v in enumerate(values)]
    items, _ = slice_batch("0-t", batch_of(messages), NO_WATERMARK, window_ms=900_000, max_out_of_orderness_ms=0)

    [dead] = [d for d in items if isinstance(d, DeadLetter)]
    assert dead.position.offset == 1 and not dead.internal
    [piece] = [s for s in items if isinstance(s, WindowSlice)]
    assert tally_dict(piece.tallies) == {(IMPRESSION["movieId"], IMPRESSION["userId"]): (2, IMPRESSION["timestamp"])}


class _Listed(list):
    pass


@pytest.mark.parametrize("series", [False, True], ids=["listed", "column"])
def test_a_dead_letter_does_not_keep_its_batch_alive(series: bool) -> None:
    # The jobs collect cycles rarely (skeleton.GC_THRESHOLDS): a batch must be freed by
    # reference counting alone once its step is done, invalid records or not. gc.disable()
    # does not stop another thread's gc.collect() (a job's periodic one): a try that saw a
    # collection proves nothing, and is made again.
    collections: list[str] = []

    def seen(phase: str, info: dict) -> None:
        collections.append(phase)

    collecting = gc.isenabled()
    gc.disable()
    gc.callbacks.append(seen)
    try:
        for _ in range(5):
            collections.clear()
            values = [json.dumps(IMPRESSION).encode(), b"{", b"[]"]
            batch = record_batch(_Listed(values), series=series)  # a list that a weak reference can watch
            column = weakref.ref(batch.values)
            items, _ = slice_batch("0-t", batch, NO_WATERMARK, window_ms=900_000, max_out_of_orderness_ms=0)
            assert sorted(d.position.offset for d in items if isinstance(d, DeadLetter)) == [1, 2]
            del batch, items
            freed = column() is None
            if not collections:
                break
        assert not collections and freed
    finally:
        gc.callbacks.remove(seen)
        if collecting:
            gc.enable()


class _Pairs(tuple):
    """A JSON object as its raw (key, value) pairs: a key may repeat."""


_TEXT = st.text(alphabet=st.sampled_from(["a", "é", '"', "\\", "\x01", "\n", " "]), max_size=3)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(st.tuples(st.sampled_from(["a", "b", "é"]), inner), max_size=3).map(_Pairs)
    ),
    max_leaves=10,
)


def _render(value: object, raw_controls: bool) -> str:
    if isinstance(value, _Pairs):
        return "{" + ",".join(f"{_render(k, raw_controls)}:{_render(v, raw_controls)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_render(v, raw_controls) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\\u0001", "\x01") if raw_controls else text  # a raw control character: not JSON


@settings(max_examples=600)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "é"]), _VALUES), min_size=1, max_size=4).map(_Pairs),
    raw_controls=st.booleans(),
)
def test_the_repeated_key_proof_judges_as_pythons_parser(pairs: _Pairs, raw_controls: bool) -> None:
    # The reference: every record parsed again by Python's parser, as before the proof.
    raw = _render(pairs, raw_controls).encode()

    def judged() -> object:
        try:
            return decode_json_object(raw)
        except InvalidEvent as exc:
            return str(exc)

    fast = judged()
    with mock.patch.object(untrusted_json, "_no_key_repeated", lambda raw, strings: False):
        assert fast == judged()
