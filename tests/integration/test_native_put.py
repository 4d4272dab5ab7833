"""The sink's native PUT (obstore) against a real S3 endpoint: what it stores, what it refuses, how it fails."""

import boto3
import pytest
from botocore.exceptions import ClientError, CredentialRetrievalError, EndpointConnectionError

from connectors.sinks.s3_client import NativePut, S3Location, S3SinkError, key_taken, with_retries
from devstack.processes import free_port
from devstack.s3 import S3Server


@pytest.fixture
def bucket(s3, unique) -> str:
    name = f"native-{unique}"
    s3.create_bucket(name)
    return name


def native(endpoint_url: str) -> NativePut:
    return NativePut(S3Location("unused", "out", endpoint_url, "us-east-1").client(), path_style=True)


def stored(s3, bucket: str) -> dict[str, bytes]:
    client = s3.client()
    keys = [entry["Key"] for entry in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_a_create_refuses_a_taken_key_as_botocore_does(s3, bucket) -> None:
    put = native(s3.endpoint_url)
    key = "out/2019-01-07--07/a%20b%2B%C3%A9/p00-0000000001-ab12cd34.parquet"
    put.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        put.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert key_taken(refused.value)
    put.put_object(Bucket=bucket, Key="out/plain", Body=b"one")
    put.put_object(Bucket=bucket, Key="out/plain", Body=b"two")  # unconditioned: replaces
    assert stored(s3, bucket) == {key: b"first", "out/plain": b"two"}


def test_keys_obstore_would_change_are_put_by_boto3_as_they_are(s3, bucket) -> None:
    put = native(s3.endpoint_url)
    keys = ["out/../a", "out/./b", "out//c", "/out/d", "out/e/", "out/%2E%2E/a b+é😀"]
    for key in keys:
        put.put_object(Bucket=bucket, Key=key, Body=key.encode(), IfNoneMatch="*")
    assert stored(s3, bucket) == {key: key.encode() for key in keys}
    with pytest.raises(ClientError) as refused:
        put.put_object(Bucket=bucket, Key="out//c", Body=b"again", IfNoneMatch="*")
    assert key_taken(refused.value)


def test_obstores_own_settings_in_the_environment_change_nothing(s3, bucket, monkeypatch) -> None:
    # obstore reads these at build time: each would break the protocol (no conditional creates,
    # another endpoint, unsigned or virtual-hosted requests to a path-style endpoint).
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "disabled")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true")
    put = native(s3.endpoint_url)
    put.put_object(Bucket=bucket, Key="out/k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        put.put_object(Bucket=bucket, Key="out/k", Body=b"second", IfNoneMatch="*")
    assert key_taken(refused.value)
    assert stored(s3, bucket) == {"out/k": b"first"}


def test_a_missing_bucket_and_an_unreachable_endpoint_are_one_clear_line(s3) -> None:
    location = S3Location("no-such-bucket", "out", s3.endpoint_url, "us-east-1")
    put = native(s3.endpoint_url)
    with pytest.raises(S3SinkError, match=r"^S3 bucket 'no-such-bucket': the bucket does not exist: create it"):
        with_retries(lambda: put.put_object(Bucket=location.bucket, Key="out/k", Body=b"x"), "write", location, 30)

    away = f"http://127.0.0.1:{free_port()}"
    put = native(away)
    with pytest.raises(EndpointConnectionError):
        put.put_object(Bucket="b-1", Key="out/k", Body=b"x", IfNoneMatch="*")
    with pytest.raises(S3SinkError, match=r"still failing after 0s \(Could not connect .*check S3_ENDPOINT_URL"):
        with_retries(lambda: put.put_object(Bucket="b-1", Key="out/k", Body=b"x"), "write", location, 0.1)


def test_a_failing_credential_chain_surfaces_as_boto3s_error(s3, bucket) -> None:
    put = native(s3.endpoint_url)

    class Expired:
        def get_frozen_credentials(self):
            raise CredentialRetrievalError(provider="assume-role-with-web-identity", error_msg="token expired")

    put._credentials = Expired()
    with pytest.raises(CredentialRetrievalError, match="token expired"):
        put.put_object(Bucket=bucket, Key="out/k", Body=b"x", IfNoneMatch="*")


def test_wrong_credentials_are_one_clear_line(tmp_path) -> None:
    server = S3Server(free_port(), tmp_path / "s3.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLEBADKEY000",
            aws_secret_access_key="not-the-secret",
        )
        put = NativePut(client, path_style=True)
        location = S3Location("b-1", "out", server.endpoint_url, "us-east-1")
        with pytest.raises(S3SinkError, match=r"^S3 bucket 'b-1': .*fix the AWS credentials"):
            with_retries(lambda: put.put_object(Bucket="b-1", Key="out/k", Body=b"x"), "write", location, 30)
    finally:
        server.stop()
