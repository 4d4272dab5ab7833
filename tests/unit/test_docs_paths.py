"""Every path the docs name exists: docs that point at moved or deleted files mislead the next engineer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/architecture.md", "docs/querying.md", "k8s/README.md"]
# A path or file name in backticks: `connectors/sinks/fence.py`, `kafka_sink.py`, `tests/guarantees/`.
# Made at run time, not kept in the repository: the local caches, the sinks' manifests, the store backups.
RUNTIME = {".cache/", "_sink/", "_recovery/"}
NAMED = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.(?:py|md|yaml|toml|js|sh)|(?:[\w.-]+/)+)`")


def repository_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_doc_names_exists(doc: str) -> None:
    files = repository_files()
    names = {Path(f).name for f in files}
    folders = {str(parent) + "/" for f in files for parent in Path(f).parents if str(parent) != "."}
    folders |= {Path(folder).name + "/" for folder in folders}  # `e2e/`, among the test tiers
    missing = []
    for path in sorted(set(NAMED.findall((ROOT / doc).read_text()))):
        if path in RUNTIME:
            continue
        known = path in files or path in folders if "/" in path else path in names
        if not known:
            missing.append(path)
    assert not missing, f"{doc} names paths that are not in the repository: {missing}"
