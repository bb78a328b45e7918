"""The repository's documentation stands on its own: nothing a user or maintainer reads points at a
document outside the repository, and the relative links between our own documents resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

OUTSIDE = re.compile(r"design\s*§|design\.md|\.\./shared")
READ_BY_PEOPLE = ("*.md", "docs/*.md", "helm/**/*", "keysvc/**/*.py", "keysvc/**/*.js", "bench/*.py", "Makefile",
                  "Dockerfile", "pyproject.toml", "tests/**/*.py", "tests/**/*.yaml", ".ci/*")
THIS_GUARD = {Path(__file__).resolve(), (ROOT / "tests" / "test_helm_chart.py").resolve()}


def _files() -> list[Path]:
    found = {p.resolve() for pattern in READ_BY_PEOPLE for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(p for p in found - THIS_GUARD if "node_modules" not in p.parts)


def test_nothing_points_outside_the_repository() -> None:
    """README, docs/, the chart, code comments and tests name no design document outside the repository: a
    clone must contain everything its readers need."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _files()
                 for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert offenders == []


def test_relative_links_between_our_documents_resolve() -> None:
    """Every relative Markdown link in README.md, CHANGELOG.md and docs/ names a file that exists."""
    broken = []
    for doc in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
                ROOT / "helm" / "keysvc" / "README.md"]:
        if not doc.exists():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []
