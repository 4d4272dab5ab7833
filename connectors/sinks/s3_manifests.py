"""The object sink's manifest log: what each write put, per sink partition and run namespace.

Layout: `<prefix>/_sink/<partition>/<namespace>/` (`manifest_dir`; the legacy namespace has
the manifests directly in `_sink/<partition>/`). A manifest `<seq>.json` lists a write's
objects and, per object, the units it holds:
`{"seq": 7, "objects": [key, ...], "units": {key: [[movieId, windowStart], ...]}}`.
A segment `<last>-from-<first>.json` folds many: `{"first", "last", "seqs": {seq: [key, ...]},
"objects", "units"}`. Manifests of older releases have no "units": a resume then reads the
objects to learn them. The format is pure functions here; `ManifestLog` reads, writes, lists
and compacts one partition's manifests; `check_existing_output` tells a run's own output
from any other under the prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from botocore.exceptions import ClientError
from prometheus_client import Counter

from connectors.sinks.fence import LEGACY_NAMESPACE
from connectors.sinks.s3_client import S3Location, S3SinkError, key_taken, with_retries

log = logging.getLogger(__name__)

MANIFESTS_COMPACTED = Counter("waxstreams_s3_manifests_compacted_total", "Sink manifests folded into segments")


class ExistingOutputError(S3SinkError):
    """A run without recovery state would write into a prefix holding another run's output."""


def manifest_dir(location: S3Location, partition: str, namespace: str = LEGACY_NAMESPACE) -> str:
    return f"{location.root()}_sink/{partition}/" + (f"{namespace}/" if namespace else "")


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


def units_of_runs(rows: pl.DataFrame, heights: Sequence[int], columns: Iterable[str]) -> list[list[tuple]]:
    """`units_of` each run of `heights` consecutive rows of `rows` (a write's objects, one
    after another), in one query: a query per write, not per object (each costs some 0.3 ms
    whatever its size).

    Only the first row of each run of equal units (within an object) is looked at; rows
    come in runs, a unit's rows together, so few remain to deduplicate."""
    columns = list(columns)
    if not heights:
        return []
    ends = np.cumsum(heights)
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift()) for c in columns])
    first = rows.select(changed).to_series().to_numpy(writable=True)  # of a run of equal units
    objects_start = ends - np.asarray(heights)
    first[objects_start[objects_start < rows.height]] = True  # an object's first row starts a run too
    picked = np.flatnonzero(first)
    units: list[set[tuple]] = [set() for _ in heights]
    objects = np.searchsorted(ends, picked, side="right").tolist()
    for unit, held in zip(rows.select(columns)[picked].rows(), objects, strict=True):
        units[held].add(unit)
    return [sorted(held) for held in units]


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


class ManifestLog:
    """One sink partition's manifests in one namespace, through the partition's S3 client.

    `record` keeps the manifests of finished writes as `pending` until `compact_if_due`
    folds them into a segment (one PUT, one batch DELETE). `puts`: what sends the PUTs
    (`put_object(Bucket, Key, Body, IfNoneMatch)`, the sink's `NativePut`: a botocore PUT
    costs some 2-3 ms of Python, one of obstore well under 1); the client by default.
    """

    def __init__(
        self,
        client: Any,
        location: S3Location,
        partition: str,
        namespace: str,
        per_segment: int,
        give_up_after: float,
        puts: Any = None,
    ) -> None:
        self._client = client
        self._puts = puts if puts is not None else client
        self._location = location
        self._partition = partition
        self._per_segment = per_segment
        self._give_up_after = give_up_after
        self.prefix = manifest_dir(location, partition, namespace)
        self._pending: dict[int, dict[str, Any]] = {}  # individual manifests not yet in a segment: seq -> body

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        return with_retries(call, what, self._location, self._give_up_after)

    def writes_from(self, next_seq: int) -> tuple[dict[int, list[str]], dict[str, list[tuple]]]:
        """The writes numbered `next_seq` or more (seq -> their objects), and the units their
        manifests name per object.

        Only keys numbered from `next_seq - per_segment` on are listed: older manifests are
        all committed (compaction keeps every individual manifest within that window of the
        newest snapshot), so start-up costs the same whatever the history. The individual
        manifests listed become pending; those a segment already holds (a compaction cut
        short) are deleted.
        """
        first = max(next_seq - self._per_segment, 0)
        # Keys sort by their (zero-padded) number: StartAfter skips the history in one request.
        start_after = {"StartAfter": f"{self.prefix}{first:012d}"} if first else {}
        # The delimiter keeps a legacy listing out of the namespaces below it.
        pages = self._call(
            "list manifests",
            lambda: list(
                self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self._location.bucket, Prefix=self.prefix, Delimiter="/", **start_after
                )
            ),
        )
        listing = sort_manifests([entry["Key"] for page in pages for entry in page.get("Contents", [])], next_seq)
        self._delete(listing.folded)
        past: dict[int, list[str]] = {}
        listed: dict[str, list[tuple]] = {}
        for key in listing.segments_past:
            body = self._read(key)
            past.update({int(seq): objects for seq, objects in body["seqs"].items() if int(seq) >= next_seq})
            listed.update(listed_units(body))
        for seq, key in listing.singles.items():
            self._pending[seq] = self._read(key)
            if seq >= next_seq:
                past[seq] = self._pending[seq]["objects"]
                listed.update(listed_units(self._pending[seq]))
        return past, listed

    def put(self, seq: int, body: bytes) -> None:
        """PUT a write's manifest only if its key is free: a taken key is this very PUT retried
        (same body), or another process writing this partition's seqs: this one is stale."""
        bucket, key = self._location.bucket, f"{self.prefix}{seq:012d}.json"

        def put() -> None:
            try:
                self._puts.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            except ClientError as exc:
                if not key_taken(exc):
                    raise
                if self._client.get_object(Bucket=bucket, Key=key)["Body"].read() != body:
                    msg = (
                        f"s3://{bucket}/{key} was written by another writer of {self._partition}: this process is "
                        "stale and stops; run one job per recovery store"
                    )
                    log.error("%s", msg)
                    raise S3SinkError(msg) from None

        self._call("write manifest", put)

    def record(self, seq: int, manifest: dict[str, Any]) -> None:
        """A write's manifest and all its objects are in."""
        self._pending[seq] = manifest

    def compact_if_due(self, next_seq: int) -> None:
        """Fold individual manifests into one segment (one PUT, one batch DELETE).

        Due when there are `per_segment` of them, or the oldest is about to leave the
        window that start-up lists: so no individual manifest is ever left where a later
        start-up would not see it. The segment keeps each seq's objects, so a resume into
        it still finds the writes past its snapshot (`writes_from`).
        """
        window = self._per_segment
        if not self._pending or (len(self._pending) < window and min(self._pending) > next_seq - window):
            return
        low, high = min(self._pending), max(self._pending)
        body = segment_body(self._pending)
        self._call(
            "write manifest segment",
            partial(
                self._puts.put_object,
                Bucket=self._location.bucket,
                Key=f"{self.prefix}{high:012d}-from-{low:012d}.json",
                Body=json.dumps(body).encode(),
            ),
        )
        self._delete([f"{self.prefix}{seq:012d}.json" for seq in sorted(self._pending)])
        MANIFESTS_COMPACTED.inc(len(self._pending))
        self._pending.clear()

    def _read(self, key: str) -> dict:
        body = self._call("read manifest", partial(self._client.get_object, Bucket=self._location.bucket, Key=key))
        return json.loads(body["Body"].read())

    def _delete(self, keys: list[str]) -> None:
        # One request per 1,000 keys (the S3 limit), instead of one per key.
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            result = self._call(
                "delete objects",
                partial(self._client.delete_objects, Bucket=self._location.bucket, Delete=batch),
            )
            if result.get("Errors"):
                error = result["Errors"][0]
                msg = f"S3 bucket {self._location.bucket!r}: cannot delete {error.get('Key')} ({error.get('Code')})"
                raise S3SinkError(msg)


def find_foreign_output(
    location: S3Location, namespace: str, give_up_after: float = 300.0, client: Any = None
) -> str | None:
    """The first key under the prefix not written by `namespace`, or None.

    Own output is a manifest in `_sink/<partition>/<namespace>/` and the objects it
    lists: what a crashed earlier attempt of this very run left. The listing stops
    at the first foreign key, so a large prefix costs one page, not a full scan.
    `client`: the location's, if made already.
    """
    client = client if client is not None else location.client()
    bucket, root = location.bucket, location.root()
    sink_root = f"{root}_sink/"

    def pages(prefix: str) -> Iterator[dict]:
        # One page at a time, each call retried, so the caller can stop at any page.
        token: dict[str, str] = {}
        while True:
            page = with_retries(
                partial(client.list_objects_v2, Bucket=bucket, Prefix=prefix, **token),
                "list output",
                location,
                give_up_after,
            )
            yield page
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    own: set[str] = set()
    for page in pages(sink_root):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            part_ns_seq = key[len(sink_root) :].split("/")
            if len(part_ns_seq) != 3 or part_ns_seq[1] != namespace:
                return key
            body = with_retries(
                partial(client.get_object, Bucket=bucket, Key=key), "read manifest", location, give_up_after
            )
            own.add(key)
            own.update(json.loads(body["Body"].read())["objects"])
    for page in pages(root):
        for entry in page.get("Contents", []):
            if entry["Key"] not in own:
                return entry["Key"]
    return None


def check_existing_output(
    location: S3Location, namespace: str, append: bool, give_up_after: float = 300.0, client: Any = None
) -> None:
    """For a run that starts without recovery state: stop if the prefix holds other output.

    Nothing would be lost either way (the run writes in its own namespace), but a new
    run over old output is usually a mistake: a lost recovery store, a wrong prefix.
    """
    foreign = find_foreign_output(location, namespace, give_up_after, client)
    if foreign is None:
        return
    if append:
        log.info(
            "s3://%s/%s already holds output of other runs (e.g. %s); appending (ON_EXISTING_OUTPUT=append)",
            location.bucket,
            location.root(),
            foreign,
        )
        return
    msg = (
        f"s3://{location.bucket}/{location.root()} already holds output of another run (e.g. {foreign}) and this run "
        "starts without recovery state: resume that run with its recovery store (-r), use a new S3_PREFIX, "
        "or set ON_EXISTING_OUTPUT=append to add this run's output beside it"
    )
    raise ExistingOutputError(msg)
