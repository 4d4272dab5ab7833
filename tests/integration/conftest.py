"""Every test under tests/integration is of the `integration` tier."""

from __future__ import annotations

import pytest

from tests.support.tiers import mark_tier


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "integration")
