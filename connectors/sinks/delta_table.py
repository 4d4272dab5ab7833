"""The Delta Lake table on S3 the Delta sink (`delta_sink.py`) commits to, and its maintenance command.

    python -m connectors.sinks.delta_table optimize|vacuum|checkpoint [--uri s3://bucket/prefix] ...

Where the table is and the credentials delta-rs gets, its creation and the start-up
checks, and the commit infos by which the sink's commits name their app, version and
units (read back on resume by `committed_units`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
import polars as pl
from botocore.exceptions import BotoCoreError, ClientError
from deltalake import DeltaTable, Field, Schema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.schema import PrimitiveType

from connectors.sinks.s3_client import S3Location, S3SinkError

log = logging.getLogger(__name__)

# commitInfo keys: which app committed which version, holding which units.
APP_KEY, VERSION_KEY, UNITS_KEY = "waxstreams.app", "waxstreams.version", "waxstreams.units"
WRITER_KEY = "waxstreams.writer"
_DELTA_TYPES = {pl.String: "string", pl.Int64: "long", pl.Int32: "integer", pl.Float64: "double", pl.Boolean: "boolean"}


class DeltaSinkError(S3SinkError):
    """The table cannot be written (for good, or by this process any more); the message names the fix."""


@dataclass(frozen=True)
class DeltaLocation:
    uri: str  # s3://bucket/prefix
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def bucket(self) -> str:
        return urlparse(self.uri).netloc

    def storage_options(self) -> dict[str, str]:
        """delta-rs options; credentials from boto3's chain, fresh each call (IRSA tokens expire). Never log them."""
        credentials = _credentials()
        if credentials is None:
            msg = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile"
            raise DeltaSinkError(msg)
        frozen = credentials.get_frozen_credentials()
        options = {
            "AWS_REGION": self.region or "us-east-1",
            "AWS_ACCESS_KEY_ID": frozen.access_key,
            "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
        }
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        return options

    def open(self) -> DeltaTable:
        return DeltaTable(self.uri, storage_options=self.storage_options())


_session: list[boto3.session.Session] = []


def _credentials() -> Any:
    """boto3's chain, resolved once per process: refreshable credentials (IRSA, roles) renew themselves."""
    if not _session:
        _session.append(boto3.session.Session())
    credentials = _session[0].get_credentials()
    if credentials is None:
        _session.clear()  # nothing found: look again next time
    return credentials


def delta_schema(schema: pl.Schema) -> Schema:
    return Schema([Field(name, PrimitiveType(_DELTA_TYPES[dtype.base_type()])) for name, dtype in schema.items()])


def describe_delta_error(exc: Exception) -> str:
    # delta-rs messages name the URI and the cause, never the storage options.
    return " ".join(str(exc).split())[:300]


def _refuse_foreign_objects(location: DeltaLocation) -> None:
    """A new table must not be made over other files: `vacuum` deletes every file the log does not name."""
    path = urlparse(location.uri).path.strip("/")
    client = S3Location(location.bucket, path, location.endpoint_url, location.region).client()
    listing = client.list_objects_v2(Bucket=location.bucket, Prefix=f"{path}/" if path else "", MaxKeys=100)
    for entry in listing.get("Contents", []):
        if "_delta_log/" in entry["Key"]:  # a table being created by another process right now
            continue
        msg = (
            f"{location.uri} holds files that are not a Delta table (e.g. {entry['Key']}), which the table's vacuum "
            "would delete: set DELTA_TABLE_URI (or S3_PREFIX) to an empty location"
        )
        raise DeltaSinkError(msg)


def ensure_table(location: DeltaLocation, schema: pl.Schema, partition_by: Sequence[str]) -> None:
    """Create the table once, before any sink partition commits.

    Processes starting at the same moment on a new table may both commit a create
    (delta-rs lets the second through as version 1, same schema): harmless, no rows yet.
    """
    try:
        if not DeltaTable.is_deltatable(location.uri, storage_options=location.storage_options()):
            _refuse_foreign_objects(location)
        table = DeltaTable.create(
            location.uri,
            delta_schema(schema),
            mode="ignore",
            partition_by=list(partition_by),
            storage_options=location.storage_options(),
        )
    except CommitFailedError:  # another process created it at the same moment
        table = location.open()
    except (DeltaError, OSError, ClientError, BotoCoreError) as exc:
        msg = (
            f"cannot create or open the Delta table {location.uri} ({describe_delta_error(exc)}): "
            "check DELTA_TABLE_URI, S3_ENDPOINT_URL and the credentials"
        )
        raise DeltaSinkError(msg) from None
    have = list(table.metadata().partition_columns)
    if have != list(partition_by):
        msg = (
            f"the Delta table {location.uri} is partitioned by {have}, this job writes {list(partition_by)}: "
            "set DELTA_TABLE_URI to a new location"
        )
        raise DeltaSinkError(msg)
    columns = {f.name for f in table.schema().fields}
    if columns != set(schema):
        msg = (
            f"the Delta table {location.uri} has columns {sorted(columns)}, this job writes {sorted(schema)}: "
            "set DELTA_TABLE_URI to a new location"
        )
        raise DeltaSinkError(msg)


def check_existing_table(location: DeltaLocation, namespace: str, append: bool) -> None:
    """For a run that starts without recovery state: stop if the table holds another run's commits."""
    try:
        table = location.open()
    except TableNotFoundError:
        return
    for commit in table.history(100):
        app = commit.get(APP_KEY)
        if commit.get("operation") == "CREATE TABLE" or (app and app.endswith(f"/{namespace}")):
            continue
        if append:
            log.info("%s already holds other runs' commits; appending (ON_EXISTING_OUTPUT=append)", location.uri)
            return
        msg = (
            f"the Delta table {location.uri} already holds commits of another run (version {commit.get('version')}) "
            "and this run starts without recovery state: resume that run with its recovery store (-r), "
            "use a new DELTA_TABLE_URI, or set ON_EXISTING_OUTPUT=append to add this run's rows"
        )
        raise DeltaSinkError(msg)


def committed_units(table: DeltaTable, app_id: str, first: int, last: int) -> set[tuple]:
    """The units of `app_id`'s versions first..last, read from the newest commits backwards."""
    wanted = set(range(first, last + 1))
    limit = 64
    while True:
        history = table.history(limit)
        units: set[tuple] = set()
        for commit in history:
            if commit.get(APP_KEY) == app_id and int(commit.get(VERSION_KEY, -1)) in wanted:
                wanted.discard(int(commit[VERSION_KEY]))
                units.update(tuple(u) for u in json.loads(commit[UNITS_KEY]))
        if not wanted:
            return units
        if len(history) < limit:  # the whole log read
            msg = (
                f"the Delta log of {table.table_uri} lacks the commits of {app_id} versions {sorted(wanted)} "
                "(log files removed before the job resumed?): restore them or start a new run with a new recovery store"
            )
            raise DeltaSinkError(msg)
        limit *= 4


# The maintenance command -------------------------------------------------------------


def _location_from_env(uri: str | None) -> DeltaLocation:
    """The job's own settings (DELTA_TABLE_URI or S3_BUCKET/S3_PREFIX, S3_ENDPOINT_URL, AWS_REGION)."""
    from dataflows.settings import MovieImpressionsSettings  # the job's settings, read the job's way

    settings = MovieImpressionsSettings.from_env(os.environ)
    return DeltaLocation(uri or settings.delta_table_uri, settings.s3_endpoint_url, settings.s3_region)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.sinks.delta_table",
        description="Maintain the Delta table of OUTPUT_FORMAT=delta (safe while the job runs).",
    )
    parser.add_argument("--uri", help="table URI (default: DELTA_TABLE_URI, else s3://<S3_BUCKET>/<S3_PREFIX>)")
    commands = parser.add_subparsers(dest="command", required=True)
    optimize = commands.add_parser(
        "optimize", help="compact small files into larger ones (a new commit; rows unchanged)"
    )
    optimize.add_argument("--target-size", type=int, default=128 * 1024 * 1024, help="bytes per file (default 128 MiB)")
    optimize.add_argument("--partition", action="append", default=[], metavar="COLUMN=VALUE", help="only these")
    vacuum = commands.add_parser("vacuum", help="delete files no longer in the table, older than the retention")
    vacuum.add_argument("--retention-hours", type=int, default=168, help="keep files removed less than this ago (168)")
    vacuum.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    commands.add_parser("checkpoint", help="write a log checkpoint and drop expired log files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        table = _location_from_env(args.uri).open()
        if args.command == "optimize":
            filters = [(column, "=", value) for column, _, value in (p.partition("=") for p in args.partition)]
            result = table.optimize.compact(partition_filters=filters or None, target_size=args.target_size)
            print(json.dumps(result))
        elif args.command == "vacuum":
            # Never below the readers' longest query: a reader may still open files removed this long ago.
            deleted = table.vacuum(
                retention_hours=args.retention_hours, dry_run=args.dry_run, enforce_retention_duration=False
            )
            print(json.dumps({"dry_run": args.dry_run, "files": len(deleted)}))
        else:
            table.create_checkpoint()
            table.cleanup_metadata()
            print(json.dumps({"checkpoint": table.version()}))
    except (DeltaError, DeltaSinkError, OSError) as exc:
        print(f"delta_table {args.command}: {describe_delta_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
