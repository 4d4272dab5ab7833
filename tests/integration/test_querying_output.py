"""docs/querying.md, tested: polars, DuckDB and the Athena table over the job's real output.

One bounded run of the movie-impressions job writes generated traffic (plus movie ids that
need percent-encoding in their folder) into the local S3; every reader must give back the
oracle's rows (tests/oracles.expected_rows), never the sink's manifests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from devstack.s3 import LOCAL_CREDENTIALS
from producers.movie_impressions import GeneratedEvent
from tests.support.data import read_s3_rows
from tests.support.jobs import ROOT
from tests.support.oracles import expected_rows
from tests.support.runs import ImpressionsRun, traffic

DOC = ROOT / "docs" / "querying.md"
COLUMNS = ["movieId", "userId", "impressions", "latestImpression", "windowStart", "windowEnd"]
SORT = ["movieId", "userId", "windowStart"]
# Ids whose folder is not the id itself: '/', space, non-ASCII, '%', dots only, URL syntax,
# and an id that looks percent-encoded already.
ODD_MOVIES = ["a/b", "tt 0042", "Amélie", "50%", "..", "q?x=1#frag+", "%2F"]


def movie_folder(movie_id: str) -> str:
    """The folder of a movie id, as docs/querying.md states it (not the job's code)."""
    folder = quote(movie_id, safe="")
    return folder.replace(".", "%2E") if not folder.strip(".") else folder


def with_odd_movies(events: list[GeneratedEvent]) -> list[GeneratedEvent]:
    """Each odd id once, right behind a valid event in its partition (same key) with its timestamp: on time."""
    out, odd = [], iter(ODD_MOVIES)
    for i, event in enumerate(events):
        out.append(event)
        if event.kind == "valid" and i % 97 == 0 and (movie := next(odd, None)) is not None:
            value = json.dumps({"movieId": movie, "userId": event.user_id, "timestamp": event.timestamp}).encode()
            out.append(GeneratedEvent(event.key, value, "valid", movie, event.user_id, event.timestamp))
    assert next(odd, None) is None, "traffic too short for every odd id"
    return out


@pytest.fixture(scope="module")
def written(kafka, s3, tmp_path_factory) -> ImpressionsRun:
    """The job's output for 4,000 generated events (2+ hours, 10 movies, invalid and late events) and the odd ids."""
    run = ImpressionsRun(kafka, s3, tmp_path_factory.mktemp("querying"))
    run.env.update(LOCAL_CREDENTIALS)  # module scope: the per-test credential fixture has not run yet
    run.produce(with_odd_movies(traffic(4_000, seed=11)))
    run.finish()
    run.assert_exact()  # the bucket is right (boto3, manifests ignored by name): what the readers must find
    return run


@pytest.fixture(scope="module")
def oracle(written) -> pl.DataFrame:
    return expected_rows(written.produced)


def all_keys(run: ImpressionsRun) -> set[str]:
    pages = run.s3.client().get_paginator("list_objects_v2").paginate(Bucket=run.bucket, Prefix=f"{run.prefix}/")
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def hour_of(window_start_ms: int) -> str:
    return datetime.fromtimestamp(window_start_ms / 1000, UTC).strftime("%Y-%m-%d--%H")


# --- the quick look ---------------------------------------------------------------------


def test_devstack_report_summarises_the_run(written, oracle) -> None:
    """`python -m devstack.report` with the job's settings: its counts are the oracle's."""
    env = {**os.environ, **written.env}
    result = subprocess.run(
        [sys.executable, "-m", "devstack.report"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = re.search(r"(\d+) objects, (\d+) rows, (\d+) impressions", result.stdout)
    assert summary, result.stdout
    assert tuple(map(int, summary.groups())) == (
        len(written.data_objects()),
        oracle.height,
        oracle["impressions"].sum(),
    )
    kinds = Counter(e.kind for e in written.produced)
    for label, count in (("input", len(written.produced)), ("dead-letter", kinds["invalid"]), ("late", kinds["late"])):
        assert re.search(rf"{label}\s+topic \S+: {count} messages", result.stdout), (label, count, result.stdout)


# --- polars -----------------------------------------------------------------------------


def polars_options(run: ImpressionsRun) -> dict[str, str]:
    return {
        "aws_endpoint_url": run.s3.endpoint_url,
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
        "aws_access_key_id": LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def test_polars_reads_every_row_once_and_filters_by_hour_and_movie_folder(written, oracle) -> None:
    root, options = f"s3://{written.bucket}/{written.prefix}", polars_options(written)

    everything = pl.scan_parquet(f"{root}/**/*.parquet", storage_options=options).collect()
    assert_frame_equal(everything.sort(SORT), oracle)

    # The path carries the hour and the (encoded) movie: as columns, from the object's key.
    located = (
        pl.scan_parquet(f"{root}/**/*.parquet", storage_options=options, include_file_paths="object")
        .with_columns(
            hour=pl.col("object").str.extract(r"/(\d{4}-\d\d-\d\d--\d\d)/[^/]+/[^/]+$"),
            movie_folder=pl.col("object").str.extract(r"/([^/]+)/[^/]+$"),
        )
        .collect()
    )
    assert located["object"].n_unique() == len(written.data_objects())
    want_located = oracle.with_columns(
        hour=pl.col("windowStart").map_elements(hour_of, return_dtype=pl.String),
        movie_folder=pl.col("movieId").map_elements(movie_folder, return_dtype=pl.String),
    )
    assert_frame_equal(located.drop("object").sort(SORT), want_located)

    # One hour: a glob on the hour folder (only its objects are listed and read).
    hour = hour_of(oracle["windowStart"].min() + 3_600_000)
    one_hour = pl.scan_parquet(f"{root}/{hour}/*/*.parquet", storage_options=options).collect()
    want_hour = want_located.filter(pl.col("hour") == hour).drop("hour", "movie_folder")
    assert not want_hour.is_empty()
    assert_frame_equal(one_hour.sort(SORT), want_hour)

    # One movie, every hour: the folder is the percent-encoded id; the movieId column is the id itself.
    for movie in ["2003", "a/b", "Amélie", "%2F"]:
        folder = movie_folder(movie)
        one_movie = pl.scan_parquet(f"{root}/*/{folder}/*.parquet", storage_options=options).collect()
        want_movie = oracle.filter(pl.col("movieId") == movie)
        assert not want_movie.is_empty()
        assert_frame_equal(one_movie.sort(SORT), want_movie)


def test_polars_glob_of_the_prefix_without_an_extension_would_take_the_manifests(written) -> None:
    root, options = f"s3://{written.bucket}/{written.prefix}", polars_options(written)
    manifests = {k for k in all_keys(written) if k.startswith(f"{written.prefix}/_sink/")}
    assert manifests and all(k.endswith(".json") for k in manifests)
    with pytest.raises(Exception, match=r"(?i)parquet|magic|footer"):
        pl.scan_parquet(f"{root}/**/*", storage_options=options).collect()


# --- DuckDB -----------------------------------------------------------------------------


def extension_file(name: str) -> Path:
    """Where the duckdb-extension-<name> wheel puts the extension (the package has no code)."""
    extension = resources.files(f"duckdb_extension_{name}") / "extensions" / f"v{duckdb.__version__}"
    return Path(str(extension / f"{name}.duckdb_extension"))


def httpfs_file() -> Path:
    return extension_file("httpfs")


def offline_duckdb(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """No download of known extensions, and an empty extension directory: nothing installed to fall back on."""
    return duckdb.connect(config={"extension_directory": str(tmp_path / "ext"), "autoinstall_known_extensions": False})


def duckdb_over_s3(s3, tmp_path: Path, *extensions: str) -> duckdb.DuckDBPyConnection:
    """DuckDB with httpfs (and `extensions`) from their wheels, and a secret for the local S3."""
    con = offline_duckdb(tmp_path)
    for name in ("httpfs", *extensions):
        con.execute(f"LOAD '{extension_file(name)}'")
    port = s3.endpoint_url.rsplit(":", 1)[1]
    con.execute(
        f"""CREATE SECRET local_s3 (TYPE S3, ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false,
            KEY_ID '{LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]}', SECRET '{LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}',
            REGION 'us-east-1')"""
    )
    return con


@pytest.fixture
def duck(written, tmp_path: Path):
    """DuckDB with httpfs from the duckdb-extension-httpfs wheel: no download, an empty extension directory."""
    con = duckdb_over_s3(written.s3, tmp_path)
    yield con
    con.close()


def frame(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    """A query's result as polars, without pyarrow (DuckDB's own `.pl()` needs it)."""
    cursor = con.execute(sql)
    return pl.DataFrame(cursor.fetchall(), schema=[d[0] for d in cursor.description], orient="row")


def test_duckdb_httpfs_loads_offline_from_the_wheel(duck, tmp_path: Path) -> None:
    [(loaded, mode, version)] = duck.execute(
        "SELECT loaded, install_mode, extension_version FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchall()
    assert loaded and mode == "NOT_INSTALLED", (loaded, mode, version)  # loaded from the wheel's file, not installed
    assert duck.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone() == (False,)
    assert not any((tmp_path / "ext").rglob("*.duckdb_extension")), "nothing was installed or downloaded"


def test_duckdb_refuses_the_extension_file_once_altered(tmp_path: Path) -> None:
    """The wheel's binary loads because DuckDB's signature on it checks out: one changed byte and it is refused."""
    body = bytearray(httpfs_file().read_bytes())
    body[len(body) // 2] ^= 0xFF
    altered = tmp_path / "httpfs.duckdb_extension"
    altered.write_bytes(bytes(body))
    con = offline_duckdb(tmp_path)
    with pytest.raises(duckdb.Error, match=r"(?i)signature"):
        con.execute(f"LOAD '{altered}'")
    con.close()


def test_duckdb_reads_every_row_once_and_filters_by_hour_and_movie_folder(duck, written, oracle) -> None:
    root = f"s3://{written.bucket}/{written.prefix}"
    everything = frame(duck, f"SELECT * FROM read_parquet('{root}/*/*/*.parquet')")
    assert_frame_equal(everything.sort(SORT), oracle)

    hour = hour_of(oracle["windowStart"].min() + 3_600_000)
    one_hour = frame(duck, f"SELECT * FROM read_parquet('{root}/{hour}/*/*.parquet')")
    want_hour = oracle.filter(pl.col("windowStart").map_elements(hour_of, return_dtype=pl.String) == hour)
    assert not want_hour.is_empty()
    assert_frame_equal(one_hour.sort(SORT), want_hour)

    for movie in ["2003", "a/b", "Amélie", "%2F"]:
        one_movie = frame(duck, f"SELECT * FROM read_parquet('{root}/*/{movie_folder(movie)}/*.parquet')")
        want_movie = oracle.filter(pl.col("movieId") == movie)
        assert not want_movie.is_empty()
        assert_frame_equal(one_movie.sort(SORT), want_movie)

    # The hour and the folder as columns, from the file name.
    located = frame(
        duck,
        f"""SELECT *, regexp_extract(filename, '/(\\d{{4}}-\\d\\d-\\d\\d--\\d\\d)/[^/]+/[^/]+$', 1) AS hour,
                      regexp_extract(filename, '/([^/]+)/[^/]+$', 1) AS movie_folder
            FROM read_parquet('{root}/*/*/*.parquet', filename = true)""",
    )
    want_located = oracle.with_columns(
        hour=pl.col("windowStart").map_elements(hour_of, return_dtype=pl.String),
        movie_folder=pl.col("movieId").map_elements(movie_folder, return_dtype=pl.String),
    )
    assert_frame_equal(located.drop("filename").sort(SORT), want_located)


def test_duckdb_documented_glob_lists_the_data_objects_and_a_naive_one_the_manifests_too(duck, written) -> None:
    root = f"s3://{written.bucket}/{written.prefix}"
    keys = all_keys(written)
    data, manifests = written.data_objects(), {k for k in keys if k.startswith(f"{written.prefix}/_sink/")}
    assert manifests and keys == data | manifests

    def listed(pattern: str) -> set[str]:
        return {
            f.removeprefix(f"s3://{written.bucket}/")
            for (f,) in duck.execute(f"SELECT file FROM glob('{pattern}')").fetchall()
        }

    assert listed(f"{root}/*/*/*.parquet") == data
    assert listed(f"{root}/**") == keys  # the naive glob: manifests included
    with pytest.raises(duckdb.Error, match=r"(?i)parquet|magic"):
        duck.execute(f"SELECT count(*) FROM read_parquet('{root}/**')").fetchall()


# --- DuckDB over the Delta table (OUTPUT_FORMAT=delta) ----------------------------------------


@pytest.fixture(scope="module")
def delta_written(kafka, s3, tmp_path_factory) -> ImpressionsRun:
    """The job's Delta table for 2,000 generated events (with invalid and late ones)."""
    run = ImpressionsRun(kafka, s3, tmp_path_factory.mktemp("querying-delta"), output_format="delta")
    run.env.update(LOCAL_CREDENTIALS)  # module scope: the per-test credential fixture has not run yet
    run.produce(traffic(2_000, seed=12))
    run.finish()
    return run


def test_duckdb_delta_scan_reads_the_jobs_table_as_the_oracle(delta_written, tmp_path: Path) -> None:
    """The README's DuckDB query over the table, with the delta extension from its wheel (offline)."""
    con = duckdb_over_s3(delta_written.s3, tmp_path, "delta")
    try:
        table = f"delta_scan('s3://{delta_written.bucket}/{delta_written.prefix}')"
        rows = frame(con, f"SELECT {', '.join(COLUMNS)} FROM {table}")
        oracle = expected_rows(delta_written.produced)
        assert_frame_equal(rows.sort(SORT), oracle)
        # The partition column is the window's hour, as the README says.
        hours = frame(con, f"SELECT DISTINCT windowHour, windowStart FROM {table}")
        assert hours.height and all(h == hour_of(w) for h, w in hours.iter_rows())
        by_movie = frame(con, f"SELECT movieId, sum(impressions) AS impressions FROM {table} GROUP BY movieId")
        want = oracle.group_by("movieId").agg(pl.col("impressions").sum())
        assert_frame_equal(by_movie.sort("movieId"), want.sort("movieId"), check_dtypes=False)
    finally:
        con.close()


# --- the doc's own code blocks, as written (bucket, prefix and credentials swapped for the local ones) --------


def doc_blocks(lang: str) -> list[str]:
    text = DOC.read_text()
    return [textwrap.dedent(body) for _, body in re.findall(rf"^( *)```{lang}\n(.*?)^\1```", text, re.M | re.S)]


def localised(block: str, run: ImpressionsRun, swaps: dict[str, str]) -> str:
    for doc_text, local in swaps.items():
        assert doc_text in block, f"docs/querying.md changed: {doc_text!r} not found in\n{block}"
        block = block.replace(doc_text, local)
    return block.replace("s3://my-bucket/impressions", f"s3://{run.bucket}/{run.prefix}")


def relation_frame(relation: duckdb.DuckDBPyRelation) -> pl.DataFrame:
    return pl.DataFrame(relation.fetchall(), schema=relation.columns, orient="row")


def test_the_docs_polars_and_duckdb_examples_run_as_written(written, oracle, duck) -> None:
    hour, movie = "2019-01-07--08", "a/b"  # the hour and the movie the examples pick; both in this run's data
    want_hour = oracle.filter(pl.col("windowStart").map_elements(hour_of, return_dtype=pl.String) == hour)
    want_movie = oracle.filter(pl.col("movieId") == movie)
    assert not want_hour.is_empty() and not want_movie.is_empty()
    want_located = oracle.with_columns(
        hour=pl.col("windowStart").map_elements(hour_of, return_dtype=pl.String),
        movie_folder=pl.col("movieId").map_elements(movie_folder, return_dtype=pl.String),
    )
    polars_main, polars_columns = doc_blocks("python")[:2]
    duckdb_main = doc_blocks("python")[2]
    duckdb_filename = doc_blocks("sql")[0]

    ns: dict = {}
    options = {'options = {"aws_region": "eu-west-1"}': f"options = {polars_options(written)!r}"}
    exec(localised(polars_main, written, options), ns)
    assert_frame_equal(ns["rows"].sort(SORT), oracle)
    assert_frame_equal(ns["one_hour"].collect().sort(SORT), want_hour)
    assert_frame_equal(ns["one_movie"].collect().sort(SORT), want_movie)
    exec(localised(polars_columns, written, {}), ns)
    assert_frame_equal(ns["rows"].collect().drop("object").sort(SORT), want_located)

    port = written.s3.endpoint_url.rsplit(":", 1)[1]
    secret = {
        "CREATE SECRET impressions_s3 (TYPE S3, KEY_ID '...', SECRET '...', SESSION_TOKEN '...', REGION 'eu-west-1')": (
            f"CREATE SECRET local_s3 (TYPE S3, ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false, "
            "KEY_ID 'local', SECRET 'local', REGION 'us-east-1')"
        )
    }
    ns = {}
    exec(localised(duckdb_main, written, secret), ns)
    want_by_movie = oracle.group_by("movieId").agg(pl.col("impressions").sum()).sort("movieId")
    assert_frame_equal(relation_frame(ns["by_movie"]).sort("movieId"), want_by_movie)
    assert_frame_equal(relation_frame(ns["one_hour"]).sort(SORT), want_hour)
    assert_frame_equal(relation_frame(ns["one_movie"]).sort(SORT), want_movie)
    located = relation_frame(ns["con"].sql(localised(duckdb_filename, written, {})))
    assert_frame_equal(located.drop("filename").sort(SORT), want_located)


# --- Athena -----------------------------------------------------------------------------


def athena_ddl() -> str:
    [ddl] = [b for b in re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S) if "CREATE EXTERNAL TABLE" in b]
    return ddl


def table_properties(ddl: str) -> dict[str, str]:
    block = ddl[ddl.index("TBLPROPERTIES") :]
    return dict(re.findall(r"'([^']+)'\s*=\s*'([^']*)'", block))


def java_to_strftime(pattern: str) -> str:
    tokens = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H"}
    out, rest = "", pattern
    while rest:
        token = next((t for t in tokens if rest.startswith(t)), None)
        if token is None:
            assert not rest[0].isalpha(), f"unsupported letter in {pattern!r}"
            out, rest = out + rest[0], rest[1:]
        else:
            out, rest = out + tokens[token], rest[len(token) :]
    return out


def test_athena_ddl_projection_renders_the_locations_the_job_writes(written, oracle) -> None:
    ddl = athena_ddl()
    props = table_properties(ddl)
    assert props["projection.enabled"] == "true"
    assert props["projection.hour.type"] == "date"
    assert props["projection.hour.format"] == "yyyy-MM-dd--HH"
    assert (props["projection.hour.interval"], props["projection.hour.interval.unit"]) == ("1", "HOURS")
    assert props["projection.movie_folder.type"] == "injected"

    # Columns: the data's (Athena matches Parquet columns by lower-cased name), partitions apart from them.
    columns = dict(re.findall(r"^\s*`?(\w+)`?\s+(string|bigint)\s*,?\s*$", ddl[: ddl.index("PARTITIONED BY")], re.M))
    schema = pl.read_parquet_schema(
        written.s3.client().get_object(Bucket=written.bucket, Key=min(written.data_objects()))["Body"]
    )
    types = {pl.String: "string", pl.Int64: "bigint"}
    assert columns == {name: types[dtype] for name, dtype in schema.items()}
    partitions = re.findall(r"`?(\w+)`?\s+string", ddl[ddl.index("PARTITIONED BY") : ddl.index("STORED AS")])
    assert partitions == ["hour", "movie_folder"]
    assert not {p.lower() for p in partitions} & {c.lower() for c in columns}

    # Render the template for the projected values: every hour of the range the data spans, every movie id
    # of the oracle encoded as the doc says. The doc's bucket and prefix stand for the run's.
    doc_root = re.search(r"LOCATION\s+'([^']+)'", ddl).group(1)
    template = props["storage.location.template"]
    assert template.startswith(doc_root) and doc_root.endswith("/")
    root = f"s3://{written.bucket}/{written.prefix}/"
    fmt = java_to_strftime(props["projection.hour.format"])
    range_start, range_end = props["projection.hour.range"].split(",")
    assert range_end == "NOW"
    first = datetime.strptime(range_start, fmt).replace(tzinfo=UTC)
    start = datetime.fromtimestamp(oracle["windowStart"].min() / 1000, UTC)
    end = datetime.fromtimestamp(oracle["windowStart"].max() / 1000, UTC)
    assert first <= start
    hour, hours = start.replace(minute=0, second=0, microsecond=0), []
    while hour <= end:
        hours.append(hour.strftime(fmt))
        hour += timedelta(hours=1)

    rendered = {
        (h, movie): template.replace(doc_root, root)
        .replace("${hour}", h)
        .replace("${movie_folder}", movie_folder(movie))
        for h in hours
        for movie in oracle["movieId"].unique()
    }
    assert all(location.endswith("/") for location in rendered.values())
    keys = all_keys(written)
    seen = {k for k in keys if f"s3://{written.bucket}/{k.rsplit('/', 1)[0]}/" in set(rendered.values())}
    # `WHERE hour = h AND movie_folder = <encoded movie>` reads the folder rendered for them: it must hold
    # exactly that movie's rows of that hour. So: each row's folder is the one rendered for its hour and id.
    in_folders = read_s3_rows(written.s3, written.bucket, written.prefix).select(
        *COLUMNS, location=pl.concat_str(pl.lit(f"s3://{written.bucket}/"), pl.col("object").str.replace(r"[^/]+$", ""))
    )
    want = oracle.with_columns(
        location=pl.struct("windowStart", "movieId").map_elements(
            lambda r: rendered[hour_of(r["windowStart"]), r["movieId"]], return_dtype=pl.String
        )
    )
    assert_frame_equal(in_folders.sort(SORT), want)

    assert seen == written.data_objects()  # every data object lies under a projected location
    rest = keys - seen
    assert rest and all(k.startswith(f"{written.prefix}/_sink/") for k in rest)  # the rest: manifests only
    assert all(
        json.loads(written.s3.client().get_object(Bucket=written.bucket, Key=k)["Body"].read())["objects"] for k in rest
    )
    with pytest.raises(ValueError):  # `_sink` is no projected hour
        datetime.strptime("_sink", fmt).replace(tzinfo=UTC)
