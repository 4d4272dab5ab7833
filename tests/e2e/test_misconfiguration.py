"""Errors a user can cause end in one line that names the setting and the fix (no traceback)."""

import pytest

from devstack.processes import free_port
from devstack.s3 import S3Server
from tests.support.data import make_topics
from tests.support.jobs import FLOWS, run_dataflow


@pytest.fixture
def good_env(kafka, s3, unique) -> dict[str, str]:
    topics = [f"in-{unique}", f"dead-{unique}", f"late-{unique}"]
    make_topics(kafka, *topics)
    s3.create_bucket(f"b-{unique}")
    return {
        "KAFKA_BROKERS": kafka.bootstrap,
        "IMPRESSIONS_TOPIC": topics[0],
        "DEAD_LETTER_TOPIC": topics[1],
        "LATE_TOPIC": topics[2],
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"b-{unique}",
        "BOUNDED": "true",
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"KAFKA_BROKERS": "127.0.0.1:{port}"},
            "cannot reach Kafka at 127.0.0.1:{port}: start it (make up) or fix KAFKA_BROKERS",
        ),
        ({"KAFKA_BROKERS": "nonsense"}, "KAFKA_BROKERS entry 'nonsense' is not host:port"),
        ({"IMPRESSIONS_TOPIC": "no-such-topic"}, "topic(s) no-such-topic do not exist"),
        (
            {"S3_BUCKET": "no-such-bucket"},
            "S3 bucket 'no-such-bucket': the bucket does not exist: create it or fix S3_BUCKET",
        ),
        (
            {"S3_ENDPOINT_URL": "http://127.0.0.1:{port}"},
            "cannot reach S3 at http://127.0.0.1:{port}: start it or fix S3_ENDPOINT_URL",
        ),
        ({"WINDOW_MINUTES": "0"}, "WINDOW_MINUTES=0 is below the minimum 1"),
        ({"WINDOW_MINUTES": "fifteen"}, "WINDOW_MINUTES='fifteen' is not a whole number"),
        ({"WINDOW_MINUTES": "7"}, "WINDOW_MINUTES=7 does not divide a day"),
        ({"OUTPUT_FORMAT": "avro"}, "OUTPUT_FORMAT='avro' is not supported: use one of parquet, csv, delta"),
        ({"BOUNDED": "maybe"}, "BOUNDED='maybe' is not a boolean"),
        (
            {"OUTPUT_FORMAT": "delta", "DELTA_TABLE_URI": "s3://no-such-lake/impressions"},
            "S3 bucket 'no-such-lake': the bucket does not exist: create it or fix DELTA_TABLE_URI",
        ),
        (
            {"OUTPUT_FORMAT": "delta", "DELTA_TABLE_URI": "file:///tmp/impressions"},
            "DELTA_TABLE_URI='file:///tmp/impressions' is not an s3://bucket/path URI: set it to e.g. s3://",
        ),
        (
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
            },
            "no AWS credentials found",
        ),
    ],
)
def test_misconfiguration_is_one_clear_line(good_env, override: dict[str, str], message: str) -> None:
    port = str(free_port())
    env = {**good_env, **{k: v.format(port=port) for k, v in override.items()}}
    result = run_dataflow(FLOWS["movie-impressions"], env, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("movie_impressions: ") and message.format(port=port) in last_line


@pytest.fixture(scope="module")
def s3_checking_credentials(tmp_path_factory: pytest.TempPathFactory):
    """An S3 endpoint that, unlike the default local one, rejects unknown access keys."""
    server = S3Server(free_port(), tmp_path_factory.mktemp("s3auth") / "s3.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    yield server
    server.stop()


def test_bad_credentials_are_one_clear_line(good_env, s3_checking_credentials) -> None:
    env = {
        **good_env,
        "S3_ENDPOINT_URL": s3_checking_credentials.endpoint_url,
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEBADKEY000",
        "AWS_SECRET_ACCESS_KEY": "not-the-secret",
    }
    result = run_dataflow(FLOWS["movie-impressions"], env, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("movie_impressions: S3 bucket") and "check the AWS credentials" in last_line
