"""The suite's shared fixtures come from tests/support, registered here as plugins; each tier
folder's conftest.py marks its tests with the tier (tests/support/tiers.py)."""

from __future__ import annotations

import hypothesis
import pytest

from devstack import processes

pytest.register_assert_rewrite("tests.support")  # helpers' asserts explain themselves too

pytest_plugins = [
    "tests.support.services",
    "tests.support.kinesis",
    "tests.support.secured",
    "tests.support.runs",
    "tests.support.entry_points",
]

# No per-example deadline: the guarantee tests run beside a CPU hog too, and a slow example is not a wrong one.
hypothesis.settings.register_profile("waxstreams", deadline=None)
hypothesis.settings.load_profile("waxstreams")
processes.tie_children_to_parent = True  # nothing the suite starts outlives it
