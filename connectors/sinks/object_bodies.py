"""An S3 sink object's body: a frame as Parquet or CSV bytes and back, and the replay's
filter of units already written (connectors/sinks/s3_objects.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl


def drop_units(rows: pl.DataFrame, units: set[tuple], columns: list[str]) -> tuple[pl.DataFrame, int]:
    """The rows whose unit (values of `columns`) is not in `units`, and how many units went."""
    seen = [unit for unit in rows.select(columns).unique().rows() if unit in units]
    if not seen:
        return rows, 0
    done = pl.DataFrame(seen, schema=rows.select(columns).schema, orient="row")
    return rows.join(done, on=columns, how="anti"), len(seen)


def decode(body: bytes, fmt: str, schema: pl.Schema) -> pl.DataFrame:
    if fmt == "parquet":
        return pl.read_parquet(io.BytesIO(body))
    return pl.read_csv(io.BytesIO(body), schema=schema)


PARQUET_ZSTD_LEVEL = 1  # zstd's fastest: ~10 % less CPU per object than polars' default level, files as small
# Set, not left to polars: its own choice cuts a large frame's row groups where its memory
# chunks end, so an object's bytes would depend on how its rows were held, not on the rows.
PARQUET_ROW_GROUP_ROWS = 262_144


def encode(frame: pl.DataFrame, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(
            buffer, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL, row_group_size=PARQUET_ROW_GROUP_ROWS
        )
    else:
        frame.write_csv(buffer)
    return buffer.getvalue()


def encode_each(rows: pl.DataFrame, heights: Sequence[int], fmt: str) -> list[bytes]:
    """The bodies of `rows` cut in consecutive runs of `heights` rows, each as `encode`
    writes it alone, byte for byte; in one polars query, as each query costs about 0.4 ms
    of CPU however few its rows (most objects hold a few thousand rows)."""
    if len(heights) <= 1:
        return [encode(rows, fmt)] if heights else []
    if sum(heights) != rows.height:
        msg = f"runs of {sum(heights)} rows in all do not cut {rows.height} rows"
        raise ValueError(msg)
    buffers = [io.BytesIO() for _ in heights]
    starts = np.cumsum([0, *heights[:-1]]).tolist()
    pieces = [rows.slice(start, height).lazy() for start, height in zip(starts, heights, strict=True)]
    if fmt == "parquet":
        sinks = [
            piece.sink_parquet(
                buffer,
                compression="zstd",
                compression_level=PARQUET_ZSTD_LEVEL,
                row_group_size=PARQUET_ROW_GROUP_ROWS,
                lazy=True,
            )
            for piece, buffer in zip(pieces, buffers, strict=True)
        ]
    else:
        sinks = [piece.sink_csv(buffer, lazy=True) for piece, buffer in zip(pieces, buffers, strict=True)]
    pl.collect_all(sinks)
    return [buffer.getvalue() for buffer in buffers]


# Objects per polars query: a whole write's in one for most writes (a query's fixed cost is most of a
# small object's), while a large write (a snapshot's, hundreds of folders) starts its first PUTs early.
ENCODE_GROUP = 64


def encoded_in_turn(rows: pl.DataFrame, heights: Sequence[int], fmt: str) -> Iterator[bytes]:
    """`encode_each`'s bodies one at a time, ENCODE_GROUP objects encoded at a time: a caller
    that sends each as it comes sends a group's while the next is encoded."""
    offset = 0
    for first in range(0, len(heights), ENCODE_GROUP):
        group = heights[first : first + ENCODE_GROUP]
        yield from encode_each(rows.slice(offset, sum(group)), group, fmt)
        offset += sum(group)
