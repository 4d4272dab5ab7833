"""The one retry loop (connectors/retry.py): backoff, the deadline, incurable failures, the policy's error."""

from __future__ import annotations

import logging

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from connectors.errors import WaxstreamsError
from connectors.retry import RetryPolicy, retry
from connectors.sinks.s3_client import S3Location, S3SinkError, s3_retry_policy


class Boom(OSError):
    pass


class Stopped(WaxstreamsError):
    pass


class Fenced(Stopped, Boom):
    """A user's error that is also of a retried type: still final."""


class FakeTime:
    """A clock that moves only when slept, so the schedule is exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(give_up_after: float = 10.0, **kw) -> RetryPolicy:
    base = {
        "service": "Thing",
        "retry_on": (Boom,),
        "error": Stopped,
        "give_up_after": give_up_after,
        "fix": "start the thing",
        "on_stop": "nothing lost",
    }
    return RetryPolicy(**(base | kw))


def failing(times: int, error: Exception, result: str = "done"):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return call, calls


def test_transient_failures_are_retried_with_doubling_capped_waits() -> None:
    time = FakeTime()
    retried = []
    call, calls = failing(7, Boom("flaky"))
    p = policy(give_up_after=60, on_retry=lambda: retried.append(1))
    assert retry(call, "read", p, clock=time.clock, sleep=time.sleep) == "done"
    assert time.slept == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert len(calls) == 8 and len(retried) == 7


def test_out_of_time_stops_with_the_policys_error_naming_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    call, calls = failing(1_000, Boom("connection refused"))
    with pytest.raises(Stopped) as stopped, caplog.at_level(logging.WARNING):
        retry(call, "read", policy(give_up_after=2.9), clock=time.clock, sleep=time.sleep)
    assert str(stopped.value) == "Thing read still failing after 3s (connection refused); start the thing"
    # 0.2 + 0.4 + 0.8 = 1.4s slept; the next wait (1.6s) would pass the 2.9s deadline.
    assert time.slept == [0.2, 0.4, 0.8]
    assert len(calls) == 4
    assert caplog.records[-1].getMessage() == f"{stopped.value}; stopping: nothing lost"


def test_an_incurable_failure_stops_at_once() -> None:
    time = FakeTime()
    call, calls = failing(1, Boom("denied"))
    p = policy(incurable=lambda exc: f"refused ({exc}): fix the key")
    with pytest.raises(Stopped, match=r"^refused \(denied\): fix the key$"):
        retry(call, "write", p, clock=time.clock, sleep=time.sleep)
    assert time.slept == [] and len(calls) == 1


@pytest.mark.parametrize("error", [Fenced("another writer took over: stop it"), KeyError("a bug")])
def test_other_failures_and_user_errors_pass_through_untouched(error: Exception) -> None:
    time = FakeTime()
    call, calls = failing(1, error)
    with pytest.raises(type(error)) as raised:
        retry(call, "write", policy(), clock=time.clock, sleep=time.sleep)
    assert raised.value is error and len(calls) == 1 and time.slept == []


def test_the_s3_policy_stops_at_once_on_a_missing_bucket_and_retries_the_network() -> None:
    p = s3_retry_policy(S3Location("no-such-bucket", "out"), give_up_after=1)
    missing = ClientError({"Error": {"Code": "NoSuchBucket"}}, "PutObject")
    time = FakeTime()
    with pytest.raises(S3SinkError, match=r"^S3 bucket 'no-such-bucket': the bucket does not exist: create it or fix"):
        retry(failing(5, missing)[0], "PUT", p, clock=time.clock, sleep=time.sleep)
    assert time.slept == []
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert retry(failing(2, unreachable)[0], "PUT", p, clock=time.clock, sleep=time.sleep) == "done"
    assert time.slept == [0.2, 0.4]


def test_the_kafka_query_policy_retries_a_passing_error_and_stops_on_a_refusal() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from connectors.transports.kafka_retry import query
    from connectors.transports.kafka_startup_check import KafkaUnavailable

    time = FakeTime()
    loading = KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))
    assert query(failing(2, loading)[0], "committed offsets", clock=time.clock, sleep=time.sleep) == "done"
    assert time.slept == [0.5, 1.0]
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    call, calls = failing(5, denied)
    with pytest.raises(KafkaUnavailable, match=r"^Kafka refused the query \(.*"):
        query(call, "watermarks", clock=time.clock, sleep=time.sleep)
    assert len(calls) == 1
    with pytest.raises(KafkaUnavailable, match=r"watermarks still failing after 30s .*; check KAFKA_BROKERS"):
        query(failing(1_000, loading)[0], "watermarks", clock=time.clock, sleep=time.sleep)
