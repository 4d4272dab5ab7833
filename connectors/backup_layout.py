"""Backups of the recovery store in S3: names, manifests, which to restore, which to prune.

Pure functions only (connectors/backup.py does the I/O). Layout, under the backup prefix:

    <prefix>/_recovery/<run>/backups/<round>/<owner>.of<N>.manifest.json
    <prefix>/_recovery/<run>/backups/<round>/<owner>.<attempt>/<file>.gz
    <prefix>/_recovery/<run>/savepoints/<name>/...                      (the same, by name)

A *round* is one backup of the whole store: every process backs up its own partitions at
the same wall-clock ticks (the round is the tick's time) or when a savepoint is asked
for (the round is its name). `owner` names the partitions one process holds (`p0`,
`p0-1-2`); `N` is the store's partition count, so a listing alone says whether a round
holds every partition. A process's manifest is written last, after its files, and lists
them with their checksums: files without a manifest are never restored.

What a backup holds: bytewax writes a partition's snapshots in epoch order, each epoch
once the frontier reached it, and collects old ones only up to an epoch every worker
passed. So a partition file that holds a snapshot of epoch e, or records collection up
to epoch c, is complete for every epoch below e (below c + 1): the copy's `epoch` is the
larger, over the files a process copies the smallest. Progress rows (which execution,
which frontier) live in whichever partition their key hashes to, so they cannot vouch
for the other files. A restore cuts every copy of a round at the round's smallest
`epoch` (snapshots at or past it dropped, frontiers and resume epochs lowered to it), so
bytewax resumes from that epoch or earlier, where every partition is complete.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

BACKUPS, SAVEPOINTS = "backups", "savepoints"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MANIFEST = re.compile(r"(?P<owner>p\d+(?:-\d+)*)\.of(?P<count>\d+)\.manifest\.json")
FORMAT = 1
REQUEST, RESULT = ".savepoint-request", ".savepoint-result"  # a savepoint asked of a running job, its answer


def valid_name(name: str) -> bool:
    """A savepoint or run name: one S3 key segment, no surprises in a shell."""
    return bool(NAME.fullmatch(name))


def round_name(tick: float) -> str:
    """The round of a periodic backup: its tick, as UTC; sorts by time."""
    return f"{datetime.fromtimestamp(tick, UTC):%Y%m%dT%H%M%SZ}"


def next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` seconds after `now`: every process backs up at the same ticks."""
    return (now // interval + 1) * interval


def owner_of(parts: Iterable[int]) -> str:
    return "p" + "-".join(str(p) for p in sorted(parts))


def run_root(root: str, run: str) -> str:
    """`root`: the prefix as a key prefix (`impressions/` or empty)."""
    return f"{root}_recovery/{run}/"


def round_dir(root: str, run: str, kind: str, name: str) -> str:
    return f"{run_root(root, run)}{kind}/{name}/"


def manifest_key(root: str, run: str, kind: str, name: str, parts: Iterable[int], count: int) -> str:
    return f"{round_dir(root, run, kind, name)}{owner_of(parts)}.of{count}.manifest.json"


@dataclass(frozen=True)
class Listed:
    """A manifest as its key names it: enough to judge completeness without reading it."""

    kind: str
    name: str
    owner: str
    count: int
    key: str

    @property
    def parts(self) -> frozenset[int]:
        return frozenset(int(p) for p in self.owner[1:].split("-"))


def parse_key(root: str, run: str, key: str) -> Listed | None:
    """The manifest a key names, or None for any other key (data files, foreign keys)."""
    base = run_root(root, run)
    if not key.startswith(base):
        return None
    kind, _, rest = key[len(base) :].partition("/")
    name, _, file = rest.partition("/")
    match = _MANIFEST.fullmatch(file)
    if kind not in (BACKUPS, SAVEPOINTS) or not name or match is None:
        return None
    return Listed(kind, name, match["owner"], int(match["count"]), key)


@dataclass(frozen=True)
class Manifest:
    """One process's backup of its partitions, written after its files."""

    kind: str
    name: str
    parts: tuple[int, ...]
    part_count: int
    process_id: int | None  # None: a single process (its directory holds the whole store)
    execution: int  # the latest bytewax execution the copy records (-1: none; progress may live elsewhere)
    epoch: int  # the copy resumes from this epoch or earlier
    created_ms: int
    seconds: float = 0.0
    files: tuple[dict, ...] = field(default_factory=tuple)  # {name, key, sha256, bytes, stored_bytes}
    collected: int = 0  # bytewax collected this copy's snapshots up to this epoch
    # The newest snapshot at or below `collected` (None: a manifest that did not record it).
    collected_snapshot: int | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "parts": list(self.parts),
            "part_count": self.part_count,
            "process_id": self.process_id,
            "execution": self.execution,
            "epoch": self.epoch,
            "created_ms": self.created_ms,
            "seconds": round(self.seconds, 3),
            "files": [dict(f) for f in self.files],
            "collected": self.collected,
            "collected_snapshot": self.collected_snapshot,
        }

    @classmethod
    def from_json(cls, raw: dict) -> Manifest:
        if raw.get("format") != FORMAT:
            msg = f"backup manifest format {raw.get('format')!r}, this version reads {FORMAT}"
            raise ValueError(msg)
        pid = raw["process_id"]
        return cls(
            str(raw["kind"]),
            str(raw["name"]),
            tuple(int(p) for p in raw["parts"]),
            int(raw["part_count"]),
            None if pid is None else int(pid),
            int(raw["execution"]),
            int(raw["epoch"]),
            int(raw["created_ms"]),
            float(raw.get("seconds", 0.0)),
            tuple(dict(f) for f in raw["files"]),
            int(raw.get("collected", 0)),
            None if raw.get("collected_snapshot") is None else int(raw["collected_snapshot"]),
        )

    @property
    def stored_bytes(self) -> int:
        return sum(int(f["stored_bytes"]) for f in self.files)


def file_epoch(newest_snapshot: int | None, collected: int | None) -> int:
    """The epoch below which one partition file is complete (see the module docstring).

    bytewax resumes at R from each key's newest snapshot below R, and its collection at c
    keeps only each key's newest snapshot at or below c: so c + 1 is the earliest epoch a
    collected file can resume from, and it is complete below it (c is written once every
    worker passed it)."""
    return max(newest_snapshot or 1, (collected or 0) + 1)


def round_epoch(manifests: Sequence[Manifest]) -> int:
    """Where a restored round is cut: every copy is complete below it."""
    return min(m.epoch for m in manifests)


def resumable(manifests: Sequence[Manifest]) -> bool:
    """No copy collected the snapshots a resume at the round's epoch R loads (bytewax's -b too
    short for the time between the copies).

    A collection at c keeps each key's newest snapshot at or below c: if the newest of all of
    them is below R, every key's snapshot below R is still there. So a copy collected past R
    is fine when nothing was written from R to c (an idle partition's copy, whose own epoch,
    and so R, lags the others')."""
    cut = round_epoch(manifests)

    def keeps(m: Manifest) -> bool:
        kept_below_cut = m.collected_snapshot is not None and m.collected_snapshot < cut
        return m.collected < cut or kept_below_cut

    return all(keeps(m) for m in manifests)


def complete(listed: Iterable[Listed]) -> dict[tuple[str, str], list[Listed]]:
    """The rounds whose manifests hold every partition of the store, by (kind, name)."""
    rounds: dict[tuple[str, str], list[Listed]] = defaultdict(list)
    for item in listed:
        rounds[(item.kind, item.name)].append(item)
    done = {}
    for key, items in rounds.items():
        counts = {i.count for i in items}
        parts = [p for i in items for p in i.parts]
        if len(counts) == 1 and sorted(parts) == list(range(counts.pop())):
            done[key] = items
    return done


def consistent(manifests: Sequence[Manifest]) -> bool:
    """A round's copies make one store: every partition once."""
    parts = sorted(p for m in manifests for p in m.parts)
    return (
        bool(manifests)
        and len({m.part_count for m in manifests}) == 1
        and parts == list(range(manifests[0].part_count))
    )


def newest_first(rounds: dict[tuple[str, str], list[Manifest]]) -> list[tuple[str, str]]:
    """Rounds from the newest: by when their last copy was made."""
    return sorted(rounds, key=lambda r: max(m.created_ms for m in rounds[r]), reverse=True)


def mine(manifests: Sequence[Manifest], local_parts: Sequence[int], process_id: int | None) -> list[Manifest]:
    """Of a consistent round, the copies this process restores: those of the partitions its
    directory holds, else those it made itself (a cluster's process), else all (one process)."""
    if local_parts:
        chosen = [m for m in manifests if set(m.parts) & set(local_parts)]
        return chosen if sorted(p for m in chosen for p in m.parts) == sorted(local_parts) else []
    if process_id is not None:
        return [m for m in manifests if m.process_id == process_id]
    return list(manifests)


def to_prune(listed: Iterable[Listed], keep: int, seen: Iterable[str] = ()) -> list[str]:
    """Periodic rounds (of manifests `listed`, or only files: `seen`) older than the `keep`
    newest complete ones; all kept while fewer are complete. Savepoints are never pruned."""
    items = [i for i in listed if i.kind == BACKUPS]
    done = sorted({name for _, name in complete(items)}, reverse=True)
    if len(done) < keep:
        return []
    oldest_kept = done[keep - 1]
    return sorted({name for name in {i.name for i in items} | set(seen) if name < oldest_kept})
