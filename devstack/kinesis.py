"""A real local Kinesis on loopback: kinesis-mock's JS build (npm `kinesis-local`), run by node.

The package is installed once with npm into `.cache/kinesis-local` (a fresh clone needs
only node and npm on PATH). It serves the Kinesis JSON API over plain HTTP
(`endpoint_url`) and HTTPS (self-signed, unused here). It binds 0.0.0.0 with no setting
to change that, so a node preload (`kinesis_loopback.js`) forces every listen onto
127.0.0.1. It accepts any AWS credentials; streams live in memory (gone on restart).

What it does and does not emulate (found while building connectors/kinesis_*):
- SplitShard, MergeShards, ListShards paging, ChildShards at SHARD_END, MillisBehindLatest,
  AT_TIMESTAMP, LATEST: yes, with a configurable delay before a stream is ACTIVE again.
- Per-shard read/write throughput limits (5 GetRecords/s, 1 MiB/s in): not enforced, so
  throttling tests inject the errors. The 1 MiB record size limit is enforced.
- A malformed iterator gives HTTP 500, not InvalidArgumentException; an unknown
  AFTER_SEQUENCE_NUMBER gives ResourceNotFoundException; a closed shard's
  EndingSequenceNumber is 9223372036854775807, not its last record's.
- It ignores SIGTERM and SIGINT: `stop()` SIGKILLs it after a second (data is in memory only).
- PutRecords slows down as a stream fills: 500 small records take 0.4 s on a fresh
  stream, ~1.4 s after 20,000; keep test data small.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from devstack.processes import ManagedProcess

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOOPBACK_PRELOAD = HERE / "kinesis_loopback.js"
PACKAGE = "kinesis-local"
VERSION = "0.6.2"
REGION = "us-east-1"
STOP_GRACE_S = 1.0
# kinesis-mock accepts any credentials; these only satisfy boto3's credential chain locally.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": REGION}

# Resharding and stream creation take 500 ms each by default; tests do many of them.
FAST_DELAYS = {
    name: "20ms"
    for name in (
        "CREATE_STREAM_DURATION",
        "DELETE_STREAM_DURATION",
        "MERGE_SHARDS_DURATION",
        "SPLIT_SHARD_DURATION",
        "UPDATE_SHARD_COUNT_DURATION",
        "UPDATE_STREAM_MODE_DURATION",
        "REGISTER_STREAM_CONSUMER_DURATION",
        "DEREGISTER_STREAM_CONSUMER_DURATION",
        "START_STREAM_ENCRYPTION_DURATION",
        "STOP_STREAM_ENCRYPTION_DURATION",
    )
}


def install_kinesis_local(cache_dir: Path) -> Path:
    """npm-install the pinned package once into `cache_dir/kinesis-local`; returns its folder."""
    prefix = cache_dir / "kinesis-local"
    package_dir = prefix / "node_modules" / PACKAGE
    prefix.mkdir(parents=True, exist_ok=True)
    # Two test sessions may start at once: one installs, the other waits.
    with (prefix / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(package_dir) == VERSION:
            return package_dir
        for tool in ("node", "npm"):
            if shutil.which(tool) is None:
                msg = f"{tool} is not on PATH: install Node.js 18+ (with npm) to run the local Kinesis"
                raise RuntimeError(msg)
        log.info("installing %s@%s from npm into %s", PACKAGE, VERSION, prefix)
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"{PACKAGE}@{VERSION}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if _installed_version(package_dir) != VERSION:
            msg = f"npm did not install {PACKAGE}@{VERSION} into {prefix}; see npm's output above"
            raise RuntimeError(msg)
    return package_dir


def _installed_version(package_dir: Path) -> str | None:
    try:
        return json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class KinesisLocal:
    """kinesis-mock listening on 127.0.0.1 only: `port` (HTTP, the one to use) and `tls_port`."""

    port: int
    tls_port: int
    log_file: Path
    cache_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # e.g. SHARD_LIMIT, INITIALIZE_STREAMS
    _process: ManagedProcess | None = field(default=None, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 60.0) -> None:
        package_dir = install_kinesis_local(self.cache_dir)
        env = {
            **os.environ,
            **FAST_DELAYS,
            "KINESIS_MOCK_PLAIN_PORT": str(self.port),
            "KINESIS_MOCK_TLS_PORT": str(self.tls_port),
            "AWS_REGION": REGION,
            "LOG_LEVEL": "WARN",
            "SHOULD_PERSIST_DATA": "false",
            # Its default account limit (50 shards) is soon reached by a test session's streams.
            "SHARD_LIMIT": "2000",
            # Its TLS certificate; by default read from the working directory.
            "KINESIS_MOCK_CERT_PATH": str(package_dir / "server.json"),
            **self.env,
        }
        self._process = ManagedProcess.spawn(
            ["node", "--require", str(LOOPBACK_PRELOAD), str(package_dir / "main.js")], self.log_file, env=env
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Ready = the HTTP port answers a signed ListStreams."""
        client = self.client(connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and not self._process.alive():
                msg = f"kinesis-local exited during start-up; see {self.log_file}"
                raise RuntimeError(msg)
            try:
                client.list_streams(Limit=1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    msg = f"kinesis-local not ready after {timeout}s; see {self.log_file}"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self._process is not None:
            # It ignores SIGTERM and SIGINT; its data is in memory only, so SIGKILL after a moment loses nothing.
            self._process.stop(grace=STOP_GRACE_S)
            self._process = None

    def client(self, **config: Any) -> Any:
        return kinesis_client(self.endpoint_url, **config)

    def create_stream(self, name: str, shards: int = 1) -> None:
        create_stream(self.endpoint_url, name, shards)


def kinesis_client(endpoint_url: str, **config: Any) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
        config=Config(**config),
    )


def create_stream(endpoint_url: str, name: str, shards: int = 1, timeout: float = 30.0) -> None:
    """Create a stream (idempotently) and wait until it is ACTIVE."""
    client = kinesis_client(endpoint_url)
    try:
        client.create_stream(StreamName=name, ShardCount=shards)
    except client.exceptions.ResourceInUseException:
        pass  # exists already
    wait_active(client, name, timeout)


def wait_active(client: Any, name: str, timeout: float = 30.0) -> None:
    """Wait until a stream is ACTIVE (after create, split, merge)."""
    deadline = time.monotonic() + timeout
    while client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            msg = f"stream {name} not ACTIVE after {timeout}s"
            raise RuntimeError(msg)
        time.sleep(0.05)


def read_stream(client: Any, stream: str) -> list[tuple[str, bytes]]:
    """Every (partition key, data) in a stream, every shard from its start to its current end."""
    from connectors.transports.kinesis.proxy import list_shards

    out: list[tuple[str, bytes]] = []
    for shard in list_shards(client, stream):
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=10_000)
            out += [(r["PartitionKey"], r["Data"]) for r in response["Records"]]
            if not response["Records"] and response.get("MillisBehindLatest", 0) == 0:
                break
            iterator = response.get("NextShardIterator")
    return out
