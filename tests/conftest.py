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

# The slowest tiers first: xdist hands out whole files in this order (with its own reordering
# off, see the Makefile), so a worker that draws a long guarantee file draws it early, not last.
_TIER_ORDER = ("guarantees", "e2e", "deploy", "integration", "inprocess", "unit")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        tier = item.path.parent.name
        return _TIER_ORDER.index(tier) if tier in _TIER_ORDER else len(_TIER_ORDER)

    items.sort(key=rank)  # stable: each file's tests keep their order
