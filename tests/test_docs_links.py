"""The README and docs/ name only files that exist: recipes, grid files, benchmarks, docs pages and figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Repository paths as the pages write them (in code spans, commands and links).
_PATH = re.compile(r"(?<![\w/.:-])((?:recipes|benchmarks|docs|classp_hf|tests)/[\w./+-]*\w\.(?:py|yaml|md|png|json))")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _mentions(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return sorted(set(_PATH.findall(text)))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_a_page_names_exists(page):
    missing = [path for path in _mentions(page) if not (REPO / path).exists()]
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_image_a_page_shows_exists(page):
    text = page.read_text(encoding="utf-8")
    images = [link for link in _IMAGE.findall(text) if not link.startswith(("http://", "https://"))]
    missing = [link for link in images if not (page.parent / link).is_file()]
    assert not missing, f"{page.relative_to(REPO)} shows images that do not exist: {missing}"


def test_the_path_pattern_finds_what_the_pages_write():
    """The check above would pass on pages it cannot read; this pins what it reads."""
    readme, usage = _mentions(REPO / "README.md"), _mentions(REPO / "docs" / "usage.md")
    assert "recipes/experiments/fpb_imdb.yaml" in readme and "recipes/configs/sentiment_queue_lora.yaml" in usage
    assert _PATH.findall("see `docs/nope.md` and git show 04fc4bd:benchmarks/<name>.py") == ["docs/nope.md"]


def test_the_readme_is_a_front_door_that_indexes_every_docs_page():
    """The README stays short (issue 21: at most ~220 lines) and its index names every page under docs/."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert pages <= set(_mentions(REPO / "README.md")), pages - set(_mentions(REPO / "README.md"))
