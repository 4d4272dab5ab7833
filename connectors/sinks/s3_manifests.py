"""The object sink's manifests and fence, as pure functions (the I/O is in s3_objects.py).

A manifest `<seq>.json` lists a write's objects and, per object, the units it holds:
`{"seq": 7, "objects": [key, ...], "units": {key: [[movieId, windowStart], ...]}}`.
A segment `<last>-from-<first>.json` folds many: `{"first", "last", "seqs": {seq: [key, ...]},
"objects", "units"}`. Manifests of older releases have no "units": a resume then reads the
objects to learn them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

# What JSON gives back as it was given: units of other types are learnt from the objects.
_JSON_EXACT = (str, int, float, bool, type(None))


def _segment_span(key: str) -> tuple[int, int] | None:
    """(first, last) seq of a manifest segment `<last>-from-<first>.json`; None for a single manifest."""
    last, sep, first = key.rsplit("/", 1)[-1].removesuffix(".json").partition("-from-")
    return (int(first), int(last)) if sep else None


@dataclass(frozen=True)
class ManifestListing:
    """A partition's manifest keys as start-up sorts them."""

    segments_past: list[str]  # segments reaching the restored seq or past it: read for those seqs
    singles: dict[int, str]  # seq -> individual manifest not folded into a segment
    folded: list[str]  # individual manifests a segment already holds: a compaction was cut short


def sort_manifests(keys: list[str], next_seq: int) -> ManifestListing:
    segments = {key: span for key in keys if (span := _segment_span(key)) is not None}
    singles: dict[int, str] = {}
    folded = []
    for key in keys:
        if key in segments:
            continue
        seq = int(key.rsplit("/", 1)[-1].split(".")[0])
        if any(low <= seq <= high for low, high in segments.values()):
            folded.append(key)
        else:
            singles[seq] = key
    past = [key for key, (_, high) in segments.items() if high >= next_seq]
    return ManifestListing(past, singles, folded)


def units_of(frame: pl.DataFrame, columns: Iterable[str]) -> list[tuple]:
    return sorted(frame.select(list(columns)).unique().rows())


def object_units(units: Mapping[str, list[tuple]]) -> dict[str, list[list]]:
    """A manifest's "units": per object key, its units as JSON lists; objects whose units JSON
    would not give back exactly are left out (a resume reads those objects instead)."""
    return {
        key: [list(unit) for unit in held]
        for key, held in units.items()
        if all(isinstance(value, _JSON_EXACT) for unit in held for value in unit)
    }


def manifest_body(seq: int, objects: list[str], units: Mapping[str, list[tuple]]) -> dict[str, Any]:
    return {"seq": seq, "objects": objects, "units": object_units(units)}


def segment_body(pending: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One segment for manifests `pending` (seq -> manifest body)."""
    seqs = sorted(pending)
    return {
        "first": seqs[0],
        "last": seqs[-1],
        "seqs": {str(seq): pending[seq]["objects"] for seq in seqs},
        "objects": [key for seq in seqs for key in pending[seq]["objects"]],
        "units": {key: held for seq in seqs for key, held in pending[seq].get("units", {}).items()},
    }


def listed_units(body: Mapping[str, Any]) -> dict[str, list[tuple]]:
    """Per object key, the units a manifest or segment says it holds (none for older manifests)."""
    return {key: [tuple(unit) for unit in held] for key, held in body.get("units", {}).items()}


def fence_of(visible: Mapping[str, set[tuple]]) -> frozenset[tuple[str, tuple]]:
    """The per-folder index of fenced units as the snapshot's fence: (folder, unit) pairs."""
    return frozenset((folder, unit) for folder, units in visible.items() for unit in units)


def visible_of(fence: Iterable[Any]) -> dict[str, set[tuple]]:
    """The snapshot's fence back as the per-folder index."""
    visible: dict[str, set[tuple]] = {}
    for folder, unit in fence:
        visible.setdefault(folder, set()).add(tuple(unit))
    return visible
