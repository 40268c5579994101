"""The import graph of ssdfast/ has no cycle, counting imports inside functions (a cycle there is only
deferred: it still ties the modules into one unit that cannot be read or tested alone).

Read with `ast`, not by importing: every `import` and `from ... import` statement anywhere in a module,
except those under `if TYPE_CHECKING:` (never run) and the compiled extension ssdfast._C (it imports nothing).
An edge goes to the module named; `from package import name` goes to package.name when that is a module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ssdfast"
IGNORED = {"ssdfast._C"}  # the compiled extension (a .so: not among the .py files walked)


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package by its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(node: ast.AST):
    """Every Import / ImportFrom under `node`, at any depth, leaving out `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and is_type_checking(child):
            for other in child.orelse:
                yield from import_nodes(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from import_nodes(child)


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of the package (`modules`) that the statement `node` in `module` imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    targets = {f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names}
    return targets & modules


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, ssdfast._C left out."""
    names = module_names(root)
    graph = {}
    for name, path in names.items():
        if name in IGNORED:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set().union(*(imported(node, name, is_package, set(names) | IGNORED) for node in import_nodes(tree)))
        graph[name] = edges - IGNORED - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, colouring the nodes)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "ssdfast.data.loader" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "ssdfast" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "ssdfast"


@pytest.mark.parametrize(
    "files, cycle",
    [
        # a function-level import closes the cycle
        (
            {"__init__.py": "", "a.py": "import ssdfast.b\n", "b.py": "def f():\n    from ssdfast import a\n"},
            ["ssdfast.a", "ssdfast.b", "ssdfast.a"],
        ),
        # a relative import, three modules round, inside a subpackage
        (
            {
                "__init__.py": "",
                "data/__init__.py": "",
                "data/x.py": "from .y import thing\n",
                "data/y.py": "from ssdfast.data import z\n",
                "data/z.py": "class C:\n    def m(self):\n        from ..data.x import other\n",
            },
            ["ssdfast.data.x", "ssdfast.data.y", "ssdfast.data.z", "ssdfast.data.x"],
        ),
        # under TYPE_CHECKING, and the compiled extension: no cycle
        (
            {
                "__init__.py": "",
                "_C.py": "import ssdfast.a\n",
                "a.py": "from ssdfast import _C\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from ssdfast.b import B\n",
                "b.py": "import ssdfast.a\n",
            },
            None,
        ),
    ],
)
def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path, files, cycle):
    """The walk against hand-made packages: it must see what the real test relies on."""
    assert find_cycle(import_graph(write_package(tmp_path, files))) == cycle
