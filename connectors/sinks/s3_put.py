"""PUT Object signed with AWS Signature Version 4 and sent straight over HTTP(S).

The object sink's data writes are many small PUTs (one per hour-and-movie folder per
write). botocore spends about 2.7 ms of Python on each (its event hooks, serialisation,
parsing), holding the GIL against the job; this spends about half of that (1.4 ms
against the local S3 server, signing and urllib3 included). It is
used for those PUTs only: every other call (manifests, listings, reads, claims) goes
through the boto3 client, and `S3_DIRECT_PUT=false` sends the data PUTs there too.

What it takes from the boto3 client, so the two always agree: the endpoint (path-style
addressing with a configured `S3_ENDPOINT_URL`, virtual-hosted on AWS for bucket names
that allow it), the region, the credentials (boto3's chain, refreshed as boto3 refreshes
them; never logged), TLS verification and proxies from the client's config. A refusal
raises botocore's `ClientError` with S3's error code, a failed connection
`EndpointConnectionError`, so callers retry and explain errors as for any boto3 call.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from connectors.engine import boto3_client_credentials, boto3_client_verify

_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")  # no dots: a dotted name breaks the TLS wildcard


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    *,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    access_key: str,
    secret_key: str,
    token: str | None,
    now: datetime,
) -> dict[str, str]:
    """The request's headers with the SigV4 ones added (`x-amz-date`, `x-amz-content-sha256`,
    the session token, `Authorization`), signing every header given and `host`.

    `path` is the URI path already percent-encoded as sent (S3 signs it as it is)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    signed = {k.lower(): str(v).strip() for k, v in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    if token:
        signed["x-amz-security-token"] = token
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            path,
            "",  # no query string
            *(f"{name}:{signed[name]}" for name in names),
            "",
            ";".join(names),
            signed["x-amz-content-sha256"],
        ]
    )
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), amz_date[:8]), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    del signed["host"]  # urllib3 sends it from the URL
    return signed


def object_url(endpoint_url: str, bucket: str, key: str, path_style: bool) -> tuple[str, str, str]:
    """(base URL, host, encoded path) of an object: path-style `/bucket/key` on the endpoint's
    host, or virtual-hosted `/key` on `bucket.<endpoint host>`."""
    parts = urlsplit(endpoint_url)
    encoded = quote(key, safe="/-_.~")
    if path_style or not _DNS_BUCKET.fullmatch(bucket):
        return f"{parts.scheme}://{parts.netloc}", parts.netloc, f"/{quote(bucket, safe='')}/{encoded}"
    host = f"{bucket}.{parts.netloc}"
    return f"{parts.scheme}://{host}", host, f"/{encoded}"


class DirectPut:
    """`put_object(Bucket, Key, Body, IfNoneMatch=None)` for one boto3 S3 client's endpoint; thread-safe."""

    def __init__(self, client: Any, path_style: bool) -> None:
        self._endpoint = client.meta.endpoint_url
        self._region = client.meta.region_name or "us-east-1"
        self._path_style = path_style
        self._credentials = boto3_client_credentials(client)
        if self._credentials is None:
            raise NoCredentialsError  # as boto3 would on its first call: one line (s3_client.describe_s3_error)
        config = client.meta.config
        verify = boto3_client_verify(client)
        pool: dict[str, Any] = {"maxsize": 16, "retries": False, "timeout": urllib3.Timeout(connect=5, read=30)}
        if verify is False:
            pool["cert_reqs"] = "CERT_NONE"
        elif isinstance(verify, str):
            pool["ca_certs"] = verify
        proxy = (config.proxies or {}).get(urlsplit(self._endpoint).scheme)
        self._http = urllib3.ProxyManager(proxy, **pool) if proxy else urllib3.PoolManager(**pool)

    def put_object(self, Bucket: str, Key: str, Body: bytes, IfNoneMatch: str | None = None) -> None:
        base, host, path = object_url(self._endpoint, Bucket, Key, self._path_style)
        frozen = self._credentials.get_frozen_credentials()  # refreshed here when due (botocore locks)
        headers = {"content-type": "application/octet-stream"}
        if IfNoneMatch is not None:
            headers["if-none-match"] = IfNoneMatch
        signed = sigv4_headers(
            method="PUT",
            host=host,
            path=path,
            headers=headers,
            body=Body,
            region=self._region,
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            now=datetime.now(UTC),
        )
        url = base + path
        try:
            response = self._http.request("PUT", url, body=Body, headers=signed, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise EndpointConnectionError(endpoint_url=url, error=exc) from None
        if response.status >= 300:
            raise _client_error(response.status, response.data)


def _client_error(status: int, body: bytes) -> ClientError:
    code, message = str(status), ""
    try:
        root = ET.fromstring(body)
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    except ET.ParseError:
        pass
    error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(error, "PutObject")  # type: ignore[arg-type]
