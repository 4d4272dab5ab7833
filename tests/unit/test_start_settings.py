"""START_POSITION, ON_EXISTING_OUTPUT, ALLOW_NO_RECOVERY and the recovery rendezvous: parsed values and one-line errors."""

from __future__ import annotations

import pytest

from connectors.transports.kafka_start_position import StartPosition
from dataflows.settings import BookingSettings, ConfigError, MovieImpressionsSettings, StartSettings

JAN_7_2019_0700_UTC_MS = 1_546_844_400_000  # date -u -d 2019-01-07T07:00:00Z +%s, times 1000


@pytest.mark.parametrize(
    ("raw", "kind", "timestamp_ms"),
    [
        ("earliest", "earliest", None),
        (" Latest ", "latest", None),
        ("GROUP", "group", None),
        ("timestamp:2019-01-07T07:00:00Z", "timestamp", JAN_7_2019_0700_UTC_MS),
        ("timestamp:2019-01-07T09:30:00+02:30", "timestamp", JAN_7_2019_0700_UTC_MS),
        ("timestamp:2019-01-07T07:00:00.250Z", "timestamp", JAN_7_2019_0700_UTC_MS + 250),
        ("timestamp:1546844400000", "timestamp", JAN_7_2019_0700_UTC_MS),
        ("timestamp: 0", "timestamp", 0),
    ],
)
def test_start_positions(raw: str, kind: str, timestamp_ms: int | None) -> None:
    position = StartSettings.from_env({"START_POSITION": raw}).start_position
    assert (position.kind, position.timestamp_ms) == (kind, timestamp_ms)


def test_defaults_refuse_no_store_fail_over_output_and_start_at_the_earliest_record() -> None:
    start = StartSettings.from_env({})
    assert (start.allow_no_recovery, start.on_existing_output, start.start_position.kind) == (False, "fail", "earliest")
    # Both jobs read them.
    assert MovieImpressionsSettings.from_env({"ON_EXISTING_OUTPUT": "APPEND"}).start.on_existing_output == "append"
    assert BookingSettings.from_env({"ALLOW_NO_RECOVERY": "yes"}).start.allow_no_recovery
    assert (start.rendezvous_port, start.rendezvous_timeout_seconds) == (9998, 300)
    assert StartSettings.from_env({"RECOVERY_RENDEZVOUS_PORT": "4000"}).rendezvous_port == 4000


def test_a_timestamp_start_position_prints_as_it_can_be_written_back() -> None:
    position = StartPosition.parse("timestamp:1546844400250")
    assert str(position) == "timestamp:2019-01-07T07:00:00.250Z"
    assert StartPosition.parse(str(position)) == position


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"START_POSITION": "beginning"},
            "START_POSITION='beginning': unknown start position 'beginning': "
            "use one of earliest, latest, group, timestamp:<ISO-8601 or epoch ms>",
        ),
        ({"START_POSITION": "earliest:5"}, "START_POSITION='earliest:5': unknown start position"),
        (
            {"START_POSITION": "timestamp:yesterday"},
            "START_POSITION='timestamp:yesterday': 'yesterday' is neither an ISO-8601 time nor epoch milliseconds",
        ),
        (
            {"START_POSITION": "timestamp:2019-01-07T07:00:00"},
            "START_POSITION='timestamp:2019-01-07T07:00:00': '2019-01-07T07:00:00' has no time zone: add Z",
        ),
        ({"START_POSITION": "timestamp:1960-01-01T00:00:00Z"}, "is before 1970"),
        ({"START_POSITION": ""}, "START_POSITION is empty"),
        (
            {"ON_EXISTING_OUTPUT": "overwrite"},
            "ON_EXISTING_OUTPUT='overwrite' is not supported: use one of fail, append",
        ),
        ({"ALLOW_NO_RECOVERY": "maybe"}, "ALLOW_NO_RECOVERY='maybe' is not a boolean: set it to true or false"),
        ({"RECOVERY_RENDEZVOUS_PORT": "70000"}, "RECOVERY_RENDEZVOUS_PORT=70000 is not a TCP port: use 1..65535"),
        ({"RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS": "0"}, "RECOVERY_RENDEZVOUS_TIMEOUT_SECONDS=0 is below the minimum 1"),
    ],
)
def test_bad_values_are_one_line_naming_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        MovieImpressionsSettings.from_env(env)
    assert message in str(error.value) and "\n" not in str(error.value)
