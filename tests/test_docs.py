"""The user documentation: README.md stays one page, and every relative link in it and in docs/ resolves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferlib.bench import BENCH_PAGE, README_MARKERS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    """The relative link targets of a markdown page (outside code blocks and code spans)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](page.md#title) [gone](missing.md) [bad anchor](#nowhere) `[code](x.md)`\n")
    assert _links(page) == ["page.md#title", "missing.md", "#nowhere"]
    assert _anchors(page) == {"title"}


def test_the_readme_is_one_page_without_lab_notes():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"\bissues? #?\d+", text, flags=re.I), "issue numbers belong in the tracker"
    assert not re.search(r"\bcommit [0-9a-f]{7,40}\b", text), "commit hashes belong in the history"
    assert "†" not in text


def test_the_bench_page_holds_the_block_the_bench_rewrites():
    text = (ROOT / BENCH_PAGE).read_text()
    start, end = README_MARKERS
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)
    assert start not in README.read_text()
