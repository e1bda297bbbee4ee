"""The docs: generated option tables are current, and every link in README.md and docs/ stays inside the repository."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_option_tables_are_generated_from_the_dataclasses():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gen_option_docs.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_links_stay_inside_the_repository():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(REPO), f"{page.name}: {target} points outside the repository"
            assert resolved.exists(), f"{page.name}: {target} does not exist"


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text) < 40_000 and "make demo" in text and "make test" in text
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"
