"""The README's Layout section is the tree as it is: ``scripts/layout.py`` makes it from the package itself."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n+```\n(.*?)\n```", text, re.S | re.M)
    assert match, "README.md has no Layout section with a code block"
    return match.group(1)


def test_the_readme_layout_is_the_tree() -> None:
    layout = runpy.run_path(str(ROOT / "scripts" / "layout.py"))["layout"]
    assert _readme_layout() == layout(), "README.md's Layout is stale: paste the output of scripts/layout.py"


def test_every_part_of_the_package_says_what_it_is_for() -> None:
    summary = runpy.run_path(str(ROOT / "scripts" / "layout.py"))["summary"]
    package = ROOT / "airflow_provider_finetune"
    silent = [
        str(path.relative_to(ROOT))
        for path in [*package.glob("*.py"), *package.glob("*/__init__.py")]
        if not summary(path)
    ]
    assert silent == []
