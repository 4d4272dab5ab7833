"""What the sinks take (`ObjectRows`) and how an item's key picks its sink partition; shared by
the object sink (`s3_objects.py`) and the Delta sink (`delta_sink.py`)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True, slots=True)
class ObjectRows:
    """Rows bound for object folders (relative to the bucket).

    `ObjectRows(directory, rows)`: all in one folder. `ObjectRows.split(rows, runs)`: rows
    of many folders, each folder's rows together, `runs` saying which: (folder, row
    count) in row order. Either way the sink writes each folder's rows to its own object;
    one frame for many folders spares the job a frame (and an item) per folder.

    `complete`: folders (of these rows or earlier ones) that will get no more rows, so
    the sink may write them before the epoch ends, one object each. A hint: rows that
    still come for such a folder only go to another object.
    """

    directory: str
    rows: pl.DataFrame
    runs: tuple[tuple[str, int], ...] = ()
    complete: tuple[str, ...] = ()

    @classmethod
    def split(cls, rows: pl.DataFrame, runs: Iterable[tuple[str, int]], complete: Iterable[str] = ()) -> ObjectRows:
        return cls("", rows, tuple(runs), tuple(complete))

    def by_folder(self) -> Iterator[tuple[str, pl.DataFrame]]:
        if not self.runs:
            yield self.directory, self.rows
            return
        offset = 0
        for folder, count in self.runs:
            yield folder, self.rows.slice(offset, count)  # a view: no copy
            offset += count


def in_unit_order(parts: list[pl.DataFrame], unit_columns: Iterable[str]) -> list[pl.DataFrame]:
    """`parts` ordered by their first row's unit, the empty ones left out.

    Each part holds whole units (a closed window's rows), each unit in one part only, so
    this order is a function of the rows alone: a file's bytes do not depend on the order
    in which windows closed (out-of-order input, worker count, a replay's epochs)."""
    columns = list(unit_columns)
    # Column by column, not `select(columns).row(0)`: a select is a query, some 0.1 ms each part.
    return sorted(
        (part for part in parts if part.height), key=lambda part: tuple(part.get_column(c)[0] for c in columns)
    )


def stable_partition(key: str) -> int:
    """Stable across processes and runs, unlike hash() (salted per process)."""
    return zlib.crc32(key.encode())


def partition_names(partitions: int) -> list[str]:
    # Zero-padded: bytewax routes `part_fn(key) % n` into the names sorted as strings.
    width = max(2, len(str(partitions - 1)))
    return [f"p{i:0{width}d}" for i in range(partitions)]
