"""How the sink's native PUT (obstore) is set up from the boto3 client, and its errors read as botocore's."""

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from obstore import exceptions

from connectors.sinks.s3_client import (
    NativePut,
    S3Location,
    boto3_error,
    describe_s3_error,
    key_taken,
    native_key,
    store_config,
)


@pytest.mark.parametrize(
    ("endpoint", "region", "bucket", "path_style", "expected", "virtual"),
    [
        (None, "eu-west-1", "my-bucket", False, "https://my-bucket.s3.eu-west-1.amazonaws.com", True),
        (None, "eu-west-1", "dotted.bucket", False, "https://s3.eu-west-1.amazonaws.com", False),  # TLS wildcard
        (None, "us-east-1", "my-bucket", False, "https://my-bucket.s3.amazonaws.com", True),
        ("http://127.0.0.1:4566", "us-east-1", "bench", True, "http://127.0.0.1:4566", False),
    ],
)
def test_the_store_addresses_the_bucket_as_the_boto3_client_would(
    endpoint, region, bucket, path_style, expected, virtual
) -> None:
    config = store_config(S3Location(bucket, "out", endpoint, region).client(), bucket, path_style)
    assert (config["endpoint"], config["aws_endpoint_url_s3"]) == (expected, expected)
    assert config["virtual_hosted_style_request"] is virtual
    assert config["region"] == region
    assert config["client_options"]["allow_http"] is expected.startswith("http:")
    # Conditional creates as the exactly-once protocol needs them, and retries left to connectors/retry.py.
    assert config["conditional_put"] == "etag" and config["skip_signature"] is False
    assert config["retry_config"] == {"max_retries": 0}


def test_tls_verification_is_the_boto3_clients(tmp_path, monkeypatch) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    options = store_config(S3Location("b-1", "p", "https://s3.example.net").client(), "b-1", True)["client_options"]
    assert options["root_certificate"] == bundle.read_bytes()
    assert "allow_invalid_certificates" not in options


def test_the_credentials_are_the_boto3_chains_and_obstore_keeps_them_a_while(tmp_path, monkeypatch) -> None:
    # A profile: boto3's chain has it, obstore's own chain (env, web identity, container, instance) does not.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "credentials").write_text(
        "[job]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n"
        "aws_session_token = profile-token\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "job")
    client = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")
    before = datetime.now(UTC)
    given = NativePut(client, path_style=True)._credentials_now()
    assert (given["access_key_id"], given["secret_access_key"], given["token"]) == (
        "AKIDPROFILE",
        "profile-secret",
        "profile-token",
    )
    # obstore asks again once credentials are within 5 minutes of expiry: past that, not on every request.
    expires = given["expires_at"]
    assert expires is not None and before + timedelta(minutes=5) < expires <= datetime.now(UTC) + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("key", "native"),
    [
        ("out/2019-01-07--07/a%20b%2Bc%C3%A9/p00-0000000001-ab12cd34.parquet", True),
        ("out/2019-01-07--07/%2E%2E/p00.parquet", True),
        ("out/a b+é😀/~{x}[y]/p.csv", True),
        ("out/a..b/p", True),
        ("out/../p", False),
        ("out/./p", False),
        ("out//p", False),
        ("/out/p", False),
        ("out/p/", False),
        ("out/\x01/p", False),
    ],
)
def test_keys_obstore_would_change_are_told_apart(key, native) -> None:
    assert native_key(key) is native


S3_ANSWER = (
    "Generic S3 error: Error performing PUT http://127.0.0.1:1/b/k in 3ms - Server returned non-2xx status code: "
    '{status}: <?xml version="1.0" encoding="utf-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "</Error>\n\nDebug source: ..."
)


def test_errors_read_as_botocores() -> None:
    location = S3Location("b-1", "p")
    taken = boto3_error(exceptions.AlreadyExistsError("Object at location k already exists: ... 412 ..."), "u")
    assert isinstance(taken, ClientError) and key_taken(taken)

    answer = S3_ANSWER.format(status="404 Not Found", code="NoSuchBucket", message="The bucket does not exist")
    missing = boto3_error(FileNotFoundError(answer), "u")
    assert isinstance(missing, ClientError)
    assert missing.response["Error"] == {"Code": "NoSuchBucket", "Message": "The bucket does not exist"}
    assert describe_s3_error(missing, location) == (
        "S3 bucket 'b-1': the bucket does not exist: create it or fix S3_BUCKET"
    )

    answer = S3_ANSWER.format(status="403 Forbidden", code="SignatureDoesNotMatch", message="...")
    assert "fix the AWS credentials" in (
        describe_s3_error(boto3_error(exceptions.PermissionDeniedError(answer), "u"), location) or ""
    )

    answer = S3_ANSWER.format(status="503 Service Unavailable", code="SlowDown", message="Reduce your request rate")
    slow = boto3_error(exceptions.GenericError(answer), "u")
    assert isinstance(slow, ClientError) and slow.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert describe_s3_error(slow, location) is None  # transient: retried

    refused = boto3_error(
        exceptions.GenericError("Generic S3 error: ... - HTTP error: error sending request\n..."),
        "http://127.0.0.1:1/b-1/k",
    )
    assert isinstance(refused, EndpointConnectionError) and describe_s3_error(refused, location) is None
    assert str(refused) == 'Could not connect to the endpoint URL: "http://127.0.0.1:1/b-1/k"'
