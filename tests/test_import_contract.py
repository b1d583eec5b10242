"""The package's layout by role holds: no import cycle, and every arrow points down.

Every import counts, at module level, inside a function, or under ``TYPE_CHECKING``: a cycle hidden behind a
lazy import is still a cycle. The layers, from the bottom: ``core`` (the request core, digests, statuses),
``models``, ``training_data``, ``rules`` (pure rules, no I/O), ``backends`` (one dialect per service), ``hooks``,
then the Airflow-facing parts (``triggers``, ``operators``, ``sensors``, ``links``, ``plugins``). The emulator is
a separate program: nothing outside it imports it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "airflow_provider_finetune"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: What each part never imports.
FORBIDDEN = {
    "core": ("backends", "hooks", "operators", "sensors", "triggers", "links", "plugins", "rules", "emulator"),
    "models": ("backends", "hooks", "operators", "sensors", "triggers", "links", "plugins", "rules", "emulator"),
    "training_data": ("backends", "hooks", "operators", "sensors", "triggers", "links", "plugins", "emulator"),
    "rules": ("backends", "hooks", "operators", "sensors", "triggers", "links", "plugins", "emulator"),
    "backends": ("hooks", "operators", "sensors", "triggers", "links", "plugins", "emulator"),
    "hooks": ("operators", "sensors", "triggers", "links", "plugins", "emulator"),
    "triggers": ("operators", "sensors", "plugins", "emulator"),
    "sensors": ("operators", "plugins", "emulator"),
    "operators": ("sensors", "plugins", "emulator"),
    "links": ("operators", "sensors", "plugins", "emulator"),
    "plugins": ("operators", "sensors", "emulator"),
}
#: The most modules the package's root may hold.
MAX_ROOT_MODULES = 6


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, every import counted."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target.startswith(PACKAGE):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
        graph.setdefault(name, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_behind_a_lazy_import() -> None:
    """The check itself: a cycle of three modules, and one of two, are both reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_every_arrow_points_down(part: str) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _part(module) == part
        for target in targets
        if _part(target) in FORBIDDEN[part]
    )
    assert wrong == []


def test_nothing_outside_the_emulator_imports_it() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _part(module) != "emulator"
        for target in targets
        if _part(target) == "emulator"
    )
    assert wrong == []


def test_the_package_root_holds_few_modules() -> None:
    root_modules = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules


#: Words that name a vendor (a service, its cloud, its gateway or its way to sign in).
VENDOR = re.compile(
    r"azure|bedrock|fireworks|together|vertex|\baws\b|amazon|entra|sigv4|portkey|litellm|mantle|openai", re.I
)


def vendor_lines(path: Path) -> list[int]:
    """The lines of code (not comments, not docstrings) of a module that name a vendor."""
    source = path.read_text(encoding="utf-8")
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and ast.get_docstring(
            node, clean=False
        ):
            first = node.body[0]
            docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE) or not VENDOR.search(token.string):
            continue
        lines.update(line for line in range(token.start[0], token.end[0] + 1) if line not in docstrings)
    return sorted(lines)


def test_no_shared_code_names_a_vendor() -> None:
    """Outside ``backends/``, ``emulator/`` and the modules named after a vendor, the code speaks of no vendor."""
    shared = [
        path
        for path in ROOT.rglob("*.py")
        if path.relative_to(ROOT).parts[0] not in ("backends", "emulator") and not VENDOR.search(path.stem)
    ]
    named = [f"{path.relative_to(ROOT)}:{line}" for path in shared for line in vendor_lines(path)]
    assert named == []


def test_the_vendor_check_sees_code_and_not_prose(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        '"""Talks to Azure."""\n\n# Bedrock, in a comment\nSERVICE = "fireworks"\n\n\ndef f():\n    """Together."""\n',
        encoding="utf-8",
    )
    assert vendor_lines(module) == [4]
