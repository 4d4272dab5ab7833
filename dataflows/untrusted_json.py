"""Decoding input that any producer, buggy or hostile, may have written (both jobs).

The rules, so that whatever a record holds, an accepted one is safe for every later
step (a state key, an S3 object name, a Parquet string, a Kafka key, a pickle):
- at most MAX_EVENT_BYTES, strict RFC 8259 JSON in UTF-8 (no BOM, NaN or Infinity,
  no invalid UTF-8, no lone surrogate escapes), a JSON object at the top;
- no object repeats a key: `{"id": 1, "id": 2}` means different things to different
  parsers, so it is refused rather than guessed;
- nesting at most MAX_DEPTH levels (deeper input overflows recursive code later);
- ids are non-blank strings (or integers, normalised to strings) of at most
  MAX_ID_BYTES UTF-8 bytes without control characters;
- event times are integer epoch milliseconds in [2000-01-01, 2100-01-01).
A record that breaks a rule raises InvalidEvent with the reason.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import msgspec

MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_ID_BYTES = 200  # three times this, percent-encoded, still fits an S3 key (1,024 bytes)
# Events outside [2000-01-01, 2100-01-01) are treated as corrupt: they would open
# windows decades away from everything else and hold state forever.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000

_LONGEST_ID_NUMBER = 10**MAX_ID_BYTES
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_json = msgspec.json.Decoder()


class InvalidEvent(ValueError):
    """An input message that breaks the input rules; the message says why."""


class _RepeatedKey(Exception):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _shape(value: Any) -> tuple[int, int]:
    """How deep `value` nests (counted to MAX_DEPTH + 1), and how many strings it holds, keys included."""
    deepest, strings, stack = 0, 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            strings += 1
        elif isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if isinstance(item, dict):
                strings += len(item)
            if depth <= MAX_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest, strings


def _no_key_repeated(raw: bytes, strings: int) -> bool:
    """True when `raw`, which msgspec decoded into an object holding `strings` strings, has no
    repeated key and Python's parser would take it too, proven without parsing it again.

    `has_only_these_strings` proves the keys (msgspec keeps one of a repeated key's entries,
    so a repeat leaves more quotes than strings decoded). The length rules out the one thing
    Python's parser refuses that a JSON parser need not, an integer past its conversion
    limit (msgspec refuses those too, today)."""
    return has_only_these_strings(raw, strings) and len(raw) < sys.get_int_max_str_digits()  # 0: no limit


def decode_json_object(raw: bytes | None) -> dict[str, Any]:
    """A message value as a JSON object, or InvalidEvent saying why it is not one."""
    if not raw:
        raise InvalidEvent("empty message")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        obj = _json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"not valid UTF-8 at byte {exc.start} of a string") from None
    except RecursionError:
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object but {type(obj).__name__}")
    depth, strings = _shape(obj)
    if depth > MAX_DEPTH:
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels")
    if not _no_key_repeated(raw, strings):
        _check_with_pythons_parser(raw)
    return obj


def _check_with_pythons_parser(raw: bytes) -> None:
    # msgspec keeps the last of repeated keys; Python's parser, told to, names them.
    try:
        json.loads(raw, object_pairs_hook=_refuse_repeated_keys)
    except _RepeatedKey as exc:
        raise InvalidEvent(f"repeated key {str(exc.args[0])!r}") from None
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit conversion limit
        raise InvalidEvent(f"not valid JSON: {exc}") from None


def has_only_these_strings(raw: bytes, strings: int) -> bool:
    """True if `raw` (already decoded by msgspec) has exactly `strings` JSON strings and no escapes.

    Then no key can be repeated: cheap proof for a fast path that skips the full check.
    """
    return raw.count(b'"') == 2 * strings and b"\\" not in raw


def is_clean_id(text: str) -> bool:
    return bool(text.strip()) and _CONTROL.search(text) is None and len(text.encode()) <= MAX_ID_BYTES


def id_value(value: Any, what: str) -> str:
    """An id field's value as text, or InvalidEvent (`what` names the field for the reason)."""
    if value is None:
        raise InvalidEvent(f"missing {what}")
    # bool is an int subclass, but true/false is never an id.
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= _LONGEST_ID_NUMBER:
            raise InvalidEvent(f"{what} is longer than {MAX_ID_BYTES} digits")
        return str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"{what} must be a string or integer, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEvent(f"{what} is empty")
    if _CONTROL.search(value):
        raise InvalidEvent(f"{what} contains control characters")
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidEvent(f"{what} is longer than {MAX_ID_BYTES} bytes")
    return value


def event_time_value(value: Any, what: str) -> int:
    """An event-time field's value as epoch milliseconds, or InvalidEvent."""
    if value is None:
        raise InvalidEvent(f"missing {what}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{what} must be integer epoch milliseconds, got {type(value).__name__}")
    if not MIN_TIMESTAMP_MS <= value < MAX_TIMESTAMP_MS:
        raise InvalidEvent(f"{what} {value} outside 2000-01-01..2100-01-01")
    return value
