"""Print the repository's layout by role, as the README's Layout section shows it.

Each part of the package is described by the first line of its own docstring, so the layout cannot drift from
the tree: ``tests/test_layout.py`` compares the README with what this prints.

    .venv/bin/python scripts/layout.py
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "airflow_provider_finetune"
#: The repository's folders beside the package, and what each holds.
BESIDE = {
    "benchmarks/": "figures, not tests: trigger, triggerer, emulator, UI and import benchmarks",
    "docs/": "the documentation",
    "example_dags/": "runnable DAGs",
    "scripts/": "what `make demo` runs (demo.py), and this layout (layout.py)",
    "tests/": "mirrors the package; integration, example DAGs, a real deployment, the UI in a headless Chromium",
}
WIDTH = 120
COLUMN = 25


def summary(path: Path) -> str:
    """The first line of a module's docstring (a package's ``__init__``)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def parts(package: Path) -> list[tuple[str, Path]]:
    """The package's modules and subpackages, modules first, each by name."""
    modules = sorted(p for p in package.glob("*.py"))
    packages = sorted(p for p in package.iterdir() if (p / "__init__.py").is_file())
    return [(p.name, p) for p in modules] + [(p.name + "/", p / "__init__.py") for p in packages]


def entry(name: str, text: str, indent: str) -> list[str]:
    """One part's lines: its name, then its description wrapped in the second column."""
    head = f"{indent}{name}".ljust(COLUMN) if len(indent + name) < COLUMN else f"{indent}{name} "
    return textwrap.wrap(text, WIDTH, initial_indent=head, subsequent_indent=" " * COLUMN, break_on_hyphens=False) or [
        head.rstrip()
    ]


def layout() -> str:
    """The layout block, as the README shows it (without its code fences)."""
    lines = [f"{PACKAGE}/"]
    for name, path in parts(ROOT / PACKAGE):
        text = summary(path)
        if name.endswith("/"):
            inside = [child.removesuffix(".py") for child, _ in parts(path.parent) if child != "__init__.py"]
            text += f" [{', '.join(inside)}]" if inside else ""
        lines += entry(name, text, "  ")
    for name, text in BESIDE.items():
        lines += entry(name, text, "")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(layout() + "\n")
