"""No product module over 400 lines: past that, a module holds more than one idea
(docs/architecture.md's folder table says which module holds what)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("dataflows", "connectors", "producers")
LIMIT = 400


def test_no_product_module_is_over_the_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in PRODUCT
        for path in (ROOT / folder).rglob("*.py")
    }
    assert len(sizes) > 50, "the product folders were not found"
    assert {name: n for name, n in sizes.items() if n > LIMIT} == {}
