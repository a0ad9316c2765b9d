"""The documentation's links stay inside the repository and resolve: every markdown link in
README.md and docs/ names a file that exists (and, with a #fragment, a heading in it)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) outside code: fenced blocks and inline code are removed first.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in FENCE.sub("", page.read_text()).splitlines()
            if line.startswith("#")}


def links() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), target) for page in PAGES
            for target in LINK.findall(prose(page.read_text()))]


def test_the_docs_have_pages_and_links():
    assert len(PAGES) > 1 and links()


@pytest.mark.parametrize(("page", "target"), links())
def test_link_resolves_inside_the_repository(page, target):
    assert "://" not in target and not target.startswith(("/", "mailto:")), \
        f"{page}: {target} leaves the repository"
    path, _, fragment = target.partition("#")
    dest = (ROOT / page).parent / path if path else ROOT / page
    assert dest.resolve().is_relative_to(ROOT), f"{page}: {target} leaves the repository"
    assert dest.exists(), f"{page}: {target} does not exist"
    if fragment:
        assert dest.suffix == ".md" and fragment in anchors(dest), \
            f"{page}: no heading #{fragment} in {path or page}"
