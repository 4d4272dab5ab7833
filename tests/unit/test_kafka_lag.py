"""The native reader's consumer lag (connectors/transports/kafka_lag.py): the partition's end minus
the offset read next, and nothing while librdkafka does not know the end yet."""

from __future__ import annotations

import pytest

from connectors.transports.kafka_lag import lag


@pytest.mark.parametrize(
    ("high", "position", "expected"),
    [
        (100, 40, 60),  # behind
        (100, 100, 0),  # caught up
        (100, 0, 100),  # nothing read yet (bytewax's own gauge skips offset 0)
        (-1001, 40, None),  # no fetch response yet: librdkafka's OFFSET_INVALID
        (100, -1001, None),  # no position yet
    ],
)
def test_lag(high: int, position: int, expected: int | None) -> None:
    assert lag(high, position) == expected
