"""The package's import graph has no cycle.

Every ``import``/``from ... import`` of a guardnet module counts, at module level or inside a
function (a lazy import only hides a cycle); imports under ``if TYPE_CHECKING:`` never run and
are left out. An edge points at the module named: ``from guardnet.x import y`` reaches
``guardnet.x.y`` when that is a module, else ``guardnet.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "guardnet"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Per guardnet module, the guardnet modules it imports."""
    files = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _absolute(node, module, is_package)
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                    for a in node.names
                ]
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        branches = [iter(sorted(graph[root]))]
        while branches:
            target = next(branches[-1], None)
            if target is None:
                branches.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif target in on_path:
                return [*path[path.index(target) :], target]
            elif target not in done:
                path.append(target)
                on_path.add(target)
                branches.append(iter(sorted(graph[target])))
    return None


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "guardnet.guard" in graph and "guardnet.calibration" in graph
    assert "guardnet.layers.base" in graph["guardnet.guard"]
    assert "guardnet.calibration" in graph["guardnet.guard"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "guardnet" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "guardnet"


@pytest.mark.parametrize(
    ("b_source", "cycle"),
    [
        ("from guardnet.a import f\n", True),
        ("def g():\n    from guardnet import a\n", True),  # lazy imports count
        ("def g():\n    from .. import a\n", True),  # relative ones too
        ("import guardnet.a\n", True),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from guardnet.a import f\n",
            False,
        ),
        ("import os\n", False),
    ],
)
def test_cycle_detection(tmp_path: Path, b_source: str, cycle: bool) -> None:
    package = _write(
        tmp_path,
        {"__init__.py": "", "a.py": "from guardnet.sub.b import g\n", "sub/__init__.py": ""}
        | {"sub/b.py": b_source},
    )
    graph = import_graph(package)
    assert graph["guardnet.a"] == {"guardnet.sub.b"}
    found = find_cycle(graph)
    if cycle:
        assert found is not None and found[0] == found[-1]
        assert set(found) == {"guardnet.a", "guardnet.sub.b"}
    else:
        assert found is None
