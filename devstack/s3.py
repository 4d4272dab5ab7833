"""A real HTTP S3 endpoint on loopback: moto in server mode."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from devstack.processes import ManagedProcess

# moto accepts any credentials; these only satisfy boto3's credential chain locally.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    port: int
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)  # e.g. INITIAL_NO_AUTH_ACTION_COUNT=0 to check credentials
    _process: ManagedProcess | None = field(default=None, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._process = ManagedProcess.spawn(
            [sys.executable, "-m", "devstack.s3_server", "-H", "127.0.0.1", "-p", str(self.port)],
            self.log_file,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1).close()
                return
            except OSError:
                if not self._process.alive() or time.monotonic() > deadline:
                    msg = f"S3 server did not start; see {self.log_file}"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def client(self):
        return s3_client(self.endpoint_url)

    def create_bucket(self, name: str) -> None:
        create_bucket(self.endpoint_url, name)


def s3_client(endpoint_url: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def create_bucket(endpoint_url: str, name: str) -> None:
    client = s3_client(endpoint_url)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)


def delete_bucket(endpoint_url: str, name: str) -> None:
    """The bucket and every object in it (benchmarks' scratch buckets: the local server keeps
    them in memory, and a bucket left per run grew it to gigabytes)."""
    client = s3_client(endpoint_url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=name)
