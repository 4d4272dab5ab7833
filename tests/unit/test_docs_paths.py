"""Every path the docs name exists, and every link between them lands: docs that point at moved or deleted
files, or at sections that were renamed, mislead the next engineer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The README, the Kubernetes runbook and every page under docs/ (a new page is checked without being listed).
DOCS = ["README.md", "k8s/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
# A path or file name in backticks: `connectors/sinks/fence.py`, `kafka_sink.py`, `tests/guarantees/`.
# Made at run time, not kept in the repository: the local caches, the sinks' manifests, the store backups.
RUNTIME = {".cache/", "_sink/", "_recovery/"}
NAMED = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.(?:py|md|yaml|toml|js|sh)|(?:[\w.-]+/)+)`")
# A markdown link to another file or a section: [text](docs/settings.md#kinesis), [text](#guarantees).
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCED = re.compile(r"^( *)```.*?^\1```", re.M | re.S)


def repository_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


def prose(path: Path) -> str:
    """The doc without its code blocks (a `# comment` in a shell block is no heading)."""
    return FENCED.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """The section anchors GitHub makes from the doc's headings (duplicates get -1, -2, ...)."""
    made: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in made else f"{slug}-{made[slug]}")
        made[slug] = made.get(slug, 0) + 1
    return out


def test_every_page_under_docs_is_checked() -> None:
    assert {"docs/architecture.md", "docs/settings.md", "docs/guarantees.md", "docs/querying.md"} <= set(DOCS)


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


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_a_doc_makes_lands_on_a_file_and_section(doc: str) -> None:
    files = repository_files()
    source = ROOT / doc
    broken = []
    for target in sorted(set(LINK.findall(prose(source)))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        file_part, _, section = target.partition("#")
        linked = (source.parent / file_part).resolve() if file_part else source
        relative = linked.relative_to(ROOT).as_posix() if linked.is_relative_to(ROOT) else None
        if relative not in files and not (linked.is_dir() and any(f.startswith(f"{relative}/") for f in files)):
            broken.append(f"{target} (no such file)")
        elif section and linked.suffix == ".md" and section not in anchors(linked):
            broken.append(f"{target} (no such section)")
    assert not broken, f"{doc} links to what is not there: {broken}"
