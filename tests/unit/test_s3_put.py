"""The sink's direct PUT signs exactly as botocore does (botocore's own signer is the expectation)."""

from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from connectors.sinks.s3_put import object_url, sigv4_headers

NOW = datetime(2026, 12, 3, 11, 40, 7, tzinfo=UTC)


def botocore_authorization(url: str, headers: dict[str, str], body: bytes, token: str | None, region: str) -> str:
    request = AWSRequest(method="PUT", url=url, data=body, headers=headers)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "s3", region).add_auth(request)
    return request.headers["Authorization"]


@pytest.mark.parametrize(
    ("endpoint", "bucket", "key", "path_style", "token", "region"),
    [
        (
            "http://127.0.0.1:4566",
            "bench",
            "out/2019-01-07--07/2000/p00-0000000001-ab12cd34.parquet",
            True,
            None,
            "us-east-1",
        ),
        ("http://127.0.0.1:4566", "bench", "out/2019-01-07--07/%2E%2E/p00.parquet", True, "session-token", "us-east-1"),
        ("https://s3.eu-west-1.amazonaws.com", "my-bucket", "out/h/a b+c/é😀/p01.csv", False, "tok", "eu-west-1"),
        ("https://s3.eu-west-1.amazonaws.com", "dotted.bucket", "out/h/m/p02.parquet", False, None, "eu-west-1"),
    ],
)
def test_the_signature_is_botocores(endpoint, bucket, key, path_style, token, region) -> None:
    base, host, path = object_url(endpoint, bucket, key, path_style)
    body = b"PAR1 some bytes"
    headers = {"if-none-match": "*", "content-type": "application/octet-stream"}
    ours = sigv4_headers(
        method="PUT",
        host=host,
        path=path,
        headers=headers,
        body=body,
        region=region,
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG",
        token=token,
        now=NOW,
    )
    assert ours["authorization"] == botocore_authorization(base + path, headers, body, token, region)
    assert ("x-amz-security-token" in ours) == (token is not None)


@pytest.mark.parametrize(
    ("endpoint", "bucket", "key", "path_style", "url"),
    [
        ("http://127.0.0.1:4566", "b", "p/h/m.parquet", True, "http://127.0.0.1:4566/b/p/h/m.parquet"),
        ("http://127.0.0.1:4566", "b", "p/h/%2E%2E/x", True, "http://127.0.0.1:4566/b/p/h/%252E%252E/x"),
        (
            "https://s3.us-east-1.amazonaws.com",
            "logs-1",
            "p/a b",
            False,
            "https://logs-1.s3.us-east-1.amazonaws.com/p/a%20b",
        ),
        # A dotted name would not match the endpoint's TLS wildcard: path-style.
        ("https://s3.us-east-1.amazonaws.com", "a.b", "k", False, "https://s3.us-east-1.amazonaws.com/a.b/k"),
    ],
)
def test_object_urls(endpoint, bucket, key, path_style, url) -> None:
    base, _, path = object_url(endpoint, bucket, key, path_style)
    assert base + path == url
