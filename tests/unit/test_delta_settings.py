"""OUTPUT_FORMAT=delta settings: where the table is, and one-line errors."""

from __future__ import annotations

import polars as pl
import pytest

from dataflows.impressions.layout import DELTA_SCHEMA, with_window_hour
from dataflows.settings import ConfigError, MovieImpressionsSettings


def test_the_table_defaults_to_the_bucket_and_prefix() -> None:
    settings = MovieImpressionsSettings.from_env({"OUTPUT_FORMAT": "Delta", "S3_BUCKET": "b", "S3_PREFIX": "/p/q/"})
    assert (settings.output_format, settings.delta_table_uri) == ("delta", "s3://b/p/q")


def test_delta_table_uri_overrides_it() -> None:
    settings = MovieImpressionsSettings.from_env({"DELTA_TABLE_URI": "s3://lake/tables/impressions/"})
    assert settings.delta_table_uri == "s3://lake/tables/impressions"


@pytest.mark.parametrize("uri", ["/tmp/table", "gs://b/t", "s3:///no-bucket", "impressions"])
def test_a_delta_table_uri_that_is_not_s3_is_one_line_with_the_fix(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"^DELTA_TABLE_URI=.* is not an s3://bucket/path URI: set it to e\.g\. "):
        MovieImpressionsSettings.from_env({"DELTA_TABLE_URI": uri})


def test_the_partition_column_is_the_utc_hour_of_the_window_start_as_the_object_layout_names_it() -> None:
    rows = pl.DataFrame({"windowStart": [1_546_845_300_000, 1_546_847_999_999 - 899_999]})  # 07:15 and 07:45 UTC
    assert with_window_hour(rows)["windowHour"].to_list() == ["2019-01-07--07", "2019-01-07--07"]
    assert list(DELTA_SCHEMA)[-1] == "windowHour"
