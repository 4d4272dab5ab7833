"""The boto3 S3 client every S3 writer shares (sinks, backups), its retries, and its errors;
and `NativePut`, the object sink's data PUTs without Python in the request path.

Transient failures (5xx, throttling, the network) are retried with capped backoff until
a deadline; failures retrying cannot cure stop at once, as one line that names the fix.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from prometheus_client import Counter

from connectors.engine import boto3_client_credentials, boto3_client_verify
from connectors.errors import WaxstreamsError
from connectors.retry import RetryPolicy, retry

if TYPE_CHECKING:
    import botocore.session
    from obstore import PutMode
    from obstore.store import S3Credential, S3Store

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
_first_client_made = False


@contextlib.contextmanager
def _long_lived_objects() -> Iterator[None]:
    """The first client: botocore's modules, the session and the S3 models, objects that live
    as long as the process and make no garbage. The cycle collector is held off meanwhile
    (at the jobs' thresholds it walked them in 15-20 ms of CPU over a bounded 1 M-event run),
    and a process that froze its start-up objects (a job's: `skeleton.tune_garbage_collector`)
    freezes these too."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count():
            gc.freeze()
        if collecting:
            gc.enable()


@functools.cache
def _session() -> botocore.session.Session:
    """One per process: it loads the S3 model once for every client (a session per client
    costs about 0.1 s each, and a job makes one per sink partition and per start-up check).
    botocore's own session, whose clients are boto3's: boto3 on top costs about 50 ms of
    start-up CPU (its import and its session) and adds nothing these clients use.
    Imported here, not at the top: botocore's client machinery takes about 0.1 s of CPU to
    import, which the job's first client pays beside the broker checks instead of before them
    (and a process that makes no client never pays)."""
    import botocore.session
    from botocore.loaders import create_loader

    session = botocore.session.Session()
    # botocore's own loader for this session's AWS_DATA_PATH, for its search paths.
    paths = create_loader(session.get_config_variable("data_path")).search_paths
    session.register_component("data_loader", quick_loader(paths))
    return session


def quick_loader(search_paths: list[str]) -> Any:
    """botocore's model loader, less a scan: its `list_available_services` lists every
    service's folders (about 450, a listdir and stats each) to see whether one service is
    there, on a session's first client: 15-20 ms of the first S3 client's ~80 ms of CPU,
    on the job's start-up path. Here `in` looks at that one service's folders; iterating
    still makes botocore's whole list."""
    from botocore.loaders import Loader

    class QuickLoader(Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> Any:
            return KnownServices(self, type_name)

    class KnownServices(Sequence[str]):
        def __init__(self, loader: Any, type_name: str) -> None:
            self._loader, self._type_name = loader, type_name

        def __contains__(self, name: object) -> bool:
            if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
                return False
            for path in self._loader.search_paths:
                folder = os.path.join(path, name)
                if os.path.isdir(folder) and any(
                    self._loader.file_loader.exists(os.path.join(folder, version, self._type_name))
                    for version in os.listdir(folder)
                ):
                    return True
            return False

        @functools.cached_property
        def _all(self) -> list[str]:
            return Loader.list_available_services(self._loader, self._type_name)

        def __getitem__(self, index: Any) -> Any:
            return self._all[index]

        def __len__(self) -> int:
            return len(self._all)

    return QuickLoader(extra_search_paths=list(search_paths), include_default_search_paths=False)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None

    def client(self, max_pool_connections: int = 16) -> Any:
        """A new client; `max_pool_connections`: the most requests it keeps a connection for at once."""
        global _first_client_made
        with _SESSION_LOCK:  # a session is not thread-safe; its clients are
            with contextlib.nullcontext() if _first_client_made else _long_lived_objects():
                from botocore.config import Config  # with the session: off the import path

                # Credentials come from boto3's standard chain (env, profile, IRSA, instance role).
                config = Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=30,
                    max_pool_connections=max_pool_connections,
                )
                client = _session().create_client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
            _first_client_made = True
            return client

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


def check_bucket(location: S3Location, client: Any = None) -> None:
    """Fail fast at start with one clear line if the bucket cannot be written (`client`: the
    location's, if made already)."""
    client = client if client is not None else location.client()
    try:
        client.head_bucket(Bucket=location.bucket)
    except EndpointConnectionError:
        msg = f"cannot reach S3 at {location.endpoint_url or 'AWS'}: start it or fix S3_ENDPOINT_URL"
        raise S3SinkError(msg) from None
    except (ClientError, BotoCoreError) as exc:
        raise S3SinkError(describe_s3_error(exc, location) or f"S3 bucket {location.bucket!r}: {exc}") from None


_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")  # no dots: a dotted name breaks the TLS wildcard
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
# obstore asks for credentials again once they are within 5 minutes of expiring: about once a
# minute, while botocore hands out refreshable ones with 10 minutes or more left.
_CREDENTIALS_TTL = timedelta(minutes=6)


class NativePut:
    """`put_object(Bucket, Key, Body, IfNoneMatch=None)` through obstore (Rust object_store) for
    one boto3 S3 client's endpoint; thread-safe.

    The object sink's data writes are many small PUTs: botocore spends about 2.5 ms of
    Python on each, hand-signing in Python about 1; obstore signs and sends with the GIL
    released, about 0.5 ms of CPU and 0.1 ms holding the GIL (bench/s3_put_ab.py).
    The sink's manifests go through it too; every other call (listings, reads, claims) goes
    through the boto3 client, and `S3_DIRECT_PUT=false` sends every PUT there.

    What it takes from the boto3 client, so the two always agree: the endpoint (path-style
    addressing with a configured `S3_ENDPOINT_URL`, virtual-hosted on AWS for bucket names
    that allow it), the region, the credentials (boto3's chain: env, profile, web identity
    for IRSA, container and instance roles; refreshed as boto3 refreshes them; never
    logged), TLS verification and proxies. obstore's own AWS_* settings from the environment
    that would change the protocol are overridden. A refusal raises botocore's
    `ClientError` with S3's error code, a failed connection `EndpointConnectionError`, so
    callers retry (connectors/retry.py; obstore's own retries are off) and explain errors
    as for any boto3 call.
    """

    def __init__(self, client: Any, path_style: bool) -> None:
        import obstore  # here, not at the top: every S3 writer imports this module, only the sink uses it

        self._obstore = obstore
        self._client = client
        self._endpoint = client.meta.endpoint_url
        self._credentials = boto3_client_credentials(client)
        if self._credentials is None:
            raise NoCredentialsError  # as boto3 would on its first call: one line (describe_s3_error)
        self._credential_error: Exception | None = None
        self._path_style = path_style
        self._stores: dict[str, S3Store] = {}

    def _store(self, bucket: str) -> S3Store:
        if bucket not in self._stores:  # two threads may both build one: equal stores
            config = store_config(self._client, bucket, self._path_style)
            store = self._obstore.store.S3Store(bucket, credential_provider=self._credentials_now, **config)
            self._stores[bucket] = store
        return self._stores[bucket]

    def _credentials_now(self) -> S3Credential:
        try:
            frozen = self._credentials.get_frozen_credentials()
        except Exception as exc:
            self._credential_error = exc  # obstore wraps it: put_object raises it as it was
            raise
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + _CREDENTIALS_TTL,
        }

    def put_object(self, Bucket: str, Key: str, Body: bytes, IfNoneMatch: str | None = None) -> None:
        if not native_key(Key):
            conditions = {"IfNoneMatch": IfNoneMatch} if IfNoneMatch else {}
            self._client.put_object(Bucket=Bucket, Key=Key, Body=Body, **conditions)
            return
        mode: PutMode = "create" if IfNoneMatch == "*" else "overwrite"
        errors = self._obstore.exceptions
        try:
            self._obstore.put(self._store(Bucket), Key, Body, mode=mode, use_multipart=False)
        except (errors.BaseError, OSError) as exc:
            if isinstance(exc, errors.UnauthenticatedError) and self._credential_error is not None:
                raise self._credential_error from None
            raise boto3_error(exc, f"{self._endpoint}/{Bucket}/{Key}") from None


def native_key(key: str) -> bool:
    """Whether obstore stores `key` as it is: it refuses empty, '.' and '..' segments and
    control characters, and drops a leading or trailing '/' (boto3 PUTs those)."""
    return key.isprintable() and all(part not in ("", ".", "..") for part in key.split("/"))


def store_config(client: Any, bucket: str, path_style: bool) -> dict[str, Any]:
    """obstore's S3Store settings for `bucket` through `client`'s endpoint, region and TLS."""
    parts = urlsplit(client.meta.endpoint_url)
    virtual = not path_style and bool(_DNS_BUCKET.fullmatch(bucket))
    endpoint = f"{parts.scheme}://{bucket}.{parts.netloc}" if virtual else f"{parts.scheme}://{parts.netloc}"
    options: dict[str, Any] = {
        "allow_http": parts.scheme == "http",
        "connect_timeout": "5s",
        "timeout": "30s",
        "pool_max_idle_per_host": "16",
    }
    verify = boto3_client_verify(client)
    if parts.scheme == "https" and verify is False:
        options["allow_invalid_certificates"] = True
    elif parts.scheme == "https" and isinstance(verify, str):  # boto3's CA bundle (AWS_CA_BUNDLE, certifi's)
        options["root_certificate"] = Path(verify).read_bytes()
    proxy = (client.meta.config.proxies or {}).get(parts.scheme)
    if proxy:
        options["proxy_url"] = proxy
    return {
        "endpoint": endpoint,
        "aws_endpoint_url_s3": endpoint,  # else AWS_ENDPOINT_URL_S3 would win over `endpoint`
        "region": client.meta.region_name or "us-east-1",
        "virtual_hosted_style_request": virtual,
        "conditional_put": "etag",  # If-None-Match: * (AWS_CONDITIONAL_PUT=disabled would refuse creates)
        "skip_signature": False,
        "client_options": options,
        "retry_config": {"max_retries": 0},  # the caller's retry loop decides
    }


def boto3_error(exc: Exception, url: str) -> Exception:
    """obstore's error as botocore raises it: `ClientError` with S3's code for an answer,
    `EndpointConnectionError` for none."""
    from obstore import exceptions

    text = str(exc)
    status = _STATUS.search(text)
    if isinstance(exc, exceptions.AlreadyExistsError | exceptions.PreconditionError):
        code, http = "PreconditionFailed", 412
    elif status:
        found = _CODE.search(text)
        http = int(status.group(1))
        code = found.group(1) if found else str(http)
    else:
        return EndpointConnectionError(endpoint_url=url, error=text.splitlines()[0] if text else type(exc).__name__)
    message = _MESSAGE.search(text)
    error = {
        "Error": {"Code": code, "Message": message.group(1) if message else ""},
        "ResponseMetadata": {"HTTPStatusCode": http},
    }
    return ClientError(error, "PutObject")  # type: ignore[arg-type]
