"""The boto3 S3 client every S3 writer shares (sinks, backups), its retries, and its errors.

Transient failures (5xx, throttling, the network) are retried with capped backoff until
a deadline; failures retrying cannot cure stop at once, as one line that names the fix.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from prometheus_client import Counter

from connectors.errors import WaxstreamsError
from connectors.retry import RetryPolicy, retry

log = logging.getLogger(__name__)

S3_RETRIES = Counter("waxstreams_s3_retries_total", "S3 calls retried after a transient failure")

# Client errors that retrying cannot fix; anything else (5xx, throttling, network) is retried.
_TERMINAL_CODES = {
    "NoSuchBucket": "the bucket does not exist: create it or fix S3_BUCKET",
    "AccessDenied": "access denied: check the AWS credentials and the bucket policy",
    "InvalidAccessKeyId": "the AWS access key is not valid: fix the AWS credentials",
    "SignatureDoesNotMatch": "the AWS secret key does not match: fix the AWS credentials",
    "403": "access denied: check the AWS credentials and the bucket policy",
    "404": "the bucket does not exist: create it or fix S3_BUCKET",
    "NotImplemented": "the S3 endpoint lacks conditional writes (PUT If-None-Match), which the sink needs",
}


class S3SinkError(WaxstreamsError, RuntimeError):
    """S3 refused or could not be reached for good; the message names the fix."""


_SESSION_LOCK = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    """One per process: it loads the S3 model once for every client (a session per client
    costs about 0.1 s each, and a job makes one per sink partition and per start-up check)."""
    return boto3.session.Session()


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None

    def client(self) -> Any:
        # Credentials come from boto3's standard chain (env, profile, IRSA, instance role).
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30, max_pool_connections=16
        )
        with _SESSION_LOCK:  # a session is not thread-safe; its clients are
            return _session().client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

    def root(self) -> str:
        """The prefix as a key prefix: `impressions/`, or empty for the whole bucket."""
        return f"{self.prefix.strip('/')}/".lstrip("/")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def key_taken(exc: ClientError) -> bool:
    """Whether a conditional PUT (`IfNoneMatch="*"`) failed because the key already exists."""
    return error_code(exc) in ("PreconditionFailed", "412")


def describe_s3_error(exc: Exception, location: S3Location) -> str | None:
    """One-line reason with the fix for errors retrying cannot cure, None for transient ones."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _TERMINAL_CODES:
            return f"S3 bucket {location.bucket!r}: {_TERMINAL_CODES[code]}"
    if isinstance(exc, BotoCoreError) and "credentials" in type(exc).__name__.lower():
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile"
    return None


def with_retries(call: Callable[[], Any], what: str, location: S3Location, give_up_after: float) -> Any:
    """Run an S3 call, retrying transient failures with capped exponential backoff."""
    return retry(call, what, s3_retry_policy(location, give_up_after))


def s3_retry_policy(location: S3Location, give_up_after: float) -> RetryPolicy:
    return RetryPolicy(
        service="S3",
        retry_on=(ClientError, BotoCoreError),
        error=S3SinkError,
        give_up_after=give_up_after,
        fix="check S3_ENDPOINT_URL and the network",
        on_stop="rows not yet in S3 are replayed from the last snapshot on restart",
        incurable=functools.partial(describe_s3_error, location=location),
        on_retry=S3_RETRIES.inc,
        logger=log,
    )


def check_bucket(location: S3Location) -> None:
    """Fail fast at start with one clear line if the bucket cannot be written."""
    client = location.client()
    try:
        client.head_bucket(Bucket=location.bucket)
    except EndpointConnectionError:
        msg = f"cannot reach S3 at {location.endpoint_url or 'AWS'}: start it or fix S3_ENDPOINT_URL"
        raise S3SinkError(msg) from None
    except (ClientError, BotoCoreError) as exc:
        raise S3SinkError(describe_s3_error(exc, location) or f"S3 bucket {location.bucket!r}: {exc}") from None
