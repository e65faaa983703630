"""README.md and docs/: every relative link points at a file of the repository (a clone has no other)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and [text](target#anchor); skips images' and code's look-alikes well enough for prose.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(doc: Path) -> list[str]:
    targets = (m.group(1).split("#", 1)[0] for m in LINK.finditer(doc.read_text()))
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_inside_the_repository(doc: Path) -> None:
    for target in relative_links(doc):
        resolved = (doc.parent / target).resolve()
        assert REPO in resolved.parents or resolved == REPO, f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"


def test_the_contract_is_in_the_repository() -> None:
    assert (REPO / "docs" / "contract.md").is_file()
    assert "docs/contract.md" in (REPO / "README.md").read_text()
