"""Messages a buggy or malicious producer writes, built around a valid record.

Every `hostile` message breaks a documented input rule (dataflows/untrusted_json.py)
by construction, so the test oracle never asks the code under test which ones are
bad. `odd_but_valid` values look hostile and keep every rule: the jobs must use them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from dataflows.untrusted_json import MAX_DEPTH, MAX_EVENT_BYTES, MAX_ID_BYTES

Record = dict[str, object]


def _dumps(record: Record) -> bytes:
    return json.dumps(record).encode()


def _with_raw(record: Record, field: str, raw_value: bytes) -> bytes:
    """The record's JSON with one field's value replaced by raw bytes (possibly invalid)."""
    marker = "\u2603MARK\u2603"
    text = _dumps({**record, field: marker})
    return text.replace(json.dumps(marker).encode(), raw_value)


def _nested(depth: int, leaf: str = "0") -> str:
    return "[" * depth + leaf + "]" * depth


# Each: (rng, valid record, its id field, its time field) -> hostile bytes.
Mutation = Callable[[random.Random, Record, str, str], bytes]


def _too_deep(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    # The record itself is depth 1, so MAX_DEPTH nested arrays inside it are one too many.
    depth = rng.choice([MAX_DEPTH, MAX_DEPTH + 1, 200, 1_500, 20_000])
    return _with_raw(rec, rng.choice(["extra", id_field]), _nested(depth).encode())


def _unbalanced_depth(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    return b"[" * rng.choice([100, 5_000, 60_000]) + b'{"a":1}'


def _huge_top_level_array(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    return json.dumps(rng.choice([[rec] * 700, list(range(10_000))])).encode()


def _repeated_key(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    field = rng.choice([id_field, ts_field, "extra"])
    body = _dumps({**rec, "extra": 1})[:-1]
    again = rec.get(field, 2) if rng.random() < 0.5 else "other"
    return body + b", " + json.dumps(field).encode() + b": " + json.dumps(again).encode() + b"}"


def _repeated_key_escaped(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    # "\u0069d" is "id": the same key to a parser, different bytes to a naive check.
    escaped = "".join(f"\\u{ord(c):04x}" if i == len(id_field) - 1 else c for i, c in enumerate(id_field))
    return _dumps(rec)[:-1] + b', "' + escaped.encode() + b'": "x"}'


def _repeated_key_nested(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    return _with_raw(rec, "meta", b'{"a": {"k": 1, "k": 2}}')


def _invalid_utf8_in_string(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
    return _with_raw(rec, rng.choice([id_field, "extra"]), b'"a' + bad + b'b"')


def _invalid_utf8_outside_string(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    text = _dumps(rec)
    cut = rng.randrange(1, len(text))
    return text[:cut] + rng.choice([b"\xff", b"\x80", b"\xfe\xff"]) + text[cut:]


def _byte_order_mark(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    text = json.dumps(rec)
    return rng.choice([b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16"), text.encode("utf-32")])


def _nul(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    text = _dumps(rec)
    choice = rng.randrange(4)
    if choice == 0:
        return text + b"\x00"
    if choice == 1:
        return b"\x00" + text
    if choice == 2:
        return _with_raw(rec, id_field, b'"a\x00b"')  # a raw NUL inside a string
    return _with_raw(rec, id_field, b'"a\\u0000b"')  # escaped: valid JSON, a control character in an id


def _lone_surrogate(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    escape = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83dx", b"x\\ude00", b"\\udbff\\udbff"])
    return _with_raw(rec, rng.choice([id_field, "extra"]), b'"' + escape + b'"')


def _not_a_number(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    word = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"1e400", b"-1e400", b"1e99999"])
    return _with_raw(rec, rng.choice([ts_field, "extra"]), word)


def _integer_overflow(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    digits = rng.choice([20, 40, 400, 4_400, 10_000])
    number = b"9" * digits
    # As an event time: out of range at any length. Elsewhere: past what a decoder holds.
    field = ts_field if digits < 4_400 else rng.choice([ts_field, "extra"])
    return _with_raw(rec, field, rng.choice([b"", b"-"]) + number)


def _float_for_integer(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    ts = int(rec[ts_field])  # type: ignore[call-overload]
    forms = [f"{ts}.0", f"{ts}.5", f"{ts / 1000:e}".replace("e+", "e"), f"{ts}e0", "-0.0", f"{ts}E-0"]
    return _with_raw(rec, ts_field, rng.choice(forms).encode())


def _id_wrong(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    bad = rng.choice(
        [
            b'"' + b"x" * (MAX_ID_BYTES + 1) + b'"',
            b'"' + "\u00e9".encode() * (MAX_ID_BYTES // 2 + 1) + b'"',  # 2 bytes each
            b"1" + b"0" * MAX_ID_BYTES,  # an integer id of MAX_ID_BYTES + 1 digits
            b'"\\u0007bell"',
            b'"tab\\there"',
            b'"\\u009f"',
            b'"   "',
            b"true",
            b"1.5",
            b"[]",
            b"{}",
        ]
    )
    return _with_raw(rec, id_field, bad)


def _over_the_size_limit(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    base = _dumps({**rec, "pad": ""})
    target = MAX_EVENT_BYTES + rng.choice([1, 2, 100, 4_096, 200_000])
    return _with_raw(rec, "pad", b'"' + b"x" * (target - len(base)) + b'"')


def _not_an_object(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    return rng.choice([b"null", b"1", b'"text"', b"true", b"[]", b"   ", b"", json.dumps(list(rec.items())).encode()])


def _truncated(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    text = _dumps(rec)
    return text[: rng.randrange(1, len(text) - 1)]


def _trailing_garbage(rng: random.Random, rec: Record, id_field: str, ts_field: str) -> bytes:
    return _dumps(rec) + rng.choice([b"}", b" {}", b"x", b"\n{}", b","])


MUTATIONS: dict[str, Mutation] = {
    "too_deep": _too_deep,
    "unbalanced_depth": _unbalanced_depth,
    "huge_top_level_array": _huge_top_level_array,
    "repeated_key": _repeated_key,
    "repeated_key_escaped": _repeated_key_escaped,
    "repeated_key_nested": _repeated_key_nested,
    "invalid_utf8_in_string": _invalid_utf8_in_string,
    "invalid_utf8_outside_string": _invalid_utf8_outside_string,
    "byte_order_mark": _byte_order_mark,
    "nul": _nul,
    "lone_surrogate": _lone_surrogate,
    "not_a_number": _not_a_number,
    "integer_overflow": _integer_overflow,
    "float_for_integer": _float_for_integer,
    "id_wrong": _id_wrong,
    "over_the_size_limit": _over_the_size_limit,
    "not_an_object": _not_an_object,
    "truncated": _truncated,
    "trailing_garbage": _trailing_garbage,
}


def hostile(rng: random.Random, record: Record, id_field: str, ts_field: str) -> tuple[str, bytes]:
    """One hostile message (its category, its bytes) made from a valid record."""
    name = rng.choice(sorted(MUTATIONS))
    return name, MUTATIONS[name](rng, record, id_field, ts_field)


def odd_id(rng: random.Random) -> str:
    """An id that keeps every rule but trips naive code: path parts, escapes, wide characters."""
    return rng.choice(
        [
            ".",
            "..",
            "../..",
            "/",
            "a/b",
            "%2F",
            "x" * MAX_ID_BYTES,
            "\U0001f3ac" * (MAX_ID_BYTES // 4),  # 4 bytes each: exactly the limit
            "e\u0301",  # combining accent
            "\u05d0\u05d1",  # right to left
            "\ufeffbom-inside",
            "\\",
            '"quoted"',
            "a,b;c",
            "<script>",
            "NaN",
        ]
    )


def odd_format(rng: random.Random, record: Record, id_field: str) -> bytes:
    """The record written in a valid but unusual shape; it means the same record."""
    choice = rng.randrange(4)
    if choice == 0:  # nested as deep as allowed, in a field the job does not read
        return _with_raw(record, "extra", _nested(MAX_DEPTH - 1).encode())
    if choice == 1:  # a large array, within the size limit
        return _dumps({**record, "extra": list(range(rng.choice([1_000, 8_000])))})
    if choice == 2:  # exactly at the size limit
        base = _dumps({**record, "pad": ""})
        return _dumps({**record, "pad": "y" * (MAX_EVENT_BYTES - len(base))})
    # Whitespace everywhere and an escaped letter in the id's key (its first match: ids are not quoted keys).
    text = json.dumps(record, indent="\t", separators=(" ,\r\n", " : ")).encode()
    return text.replace(b'"' + id_field[0].encode(), b'"\\u%04x' % ord(id_field[0]), 1)


def odd_but_valid(rng: random.Random, record: Record, id_field: str) -> tuple[Record, bytes]:
    """A valid message that looks hostile; returns the record it means and its bytes."""
    if rng.random() < 0.5:
        return record, odd_format(rng, record, id_field)
    meant = {**record, id_field: odd_id(rng)}
    return meant, json.dumps(meant, ensure_ascii=rng.random() < 0.5).encode()
