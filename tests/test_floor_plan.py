"""The package's floor plan (docs/contributing.md): a small top level, every module used by the package or
the tools (not only by tests and benchmarks), and a README code map that names exactly the modules there are.

The import graph is read with `ast` (tests/test_import_graph.py): function-level imports count, so a module
imported lazily is still a module in use.
"""

import ast
import re
from pathlib import Path

from test_import_graph import PACKAGE, import_nodes, imported, module_names

ROOT = PACKAGE.parent
TOP_LEVEL_LIMIT = 12  # the modules a learner meets first (anchors, reference, ops, ...); the rest live in wings


def lazy_exports() -> dict[str, dict[str, str]]:
    """{package: {name: module}} of the packages that import their names on first use (an EXPORTS dict of
    name -> submodule in __init__.py, read by a module-level __getattr__)."""
    out = {}
    for name, path in module_names().items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXPORTS" for t in node.targets):
                out[name] = {key: f"{name}.{module}" for key, module in ast.literal_eval(node.value).items()}
    return out


def references(files: list[Path]) -> set[str]:
    """The package's modules that `files` use: imports anywhere in a file, names a lazy package exports, and
    "ssdfast.module:Name" strings (a registry's entries, imported on first use)."""
    modules, lazy, used = set(module_names()), lazy_exports(), set()
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in import_nodes(tree):
            used |= imported(node, "", False, modules)
            if isinstance(node, ast.ImportFrom) and node.module in lazy:
                used |= {lazy[node.module][a.name] for a in node.names if a.name in lazy[node.module]}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = re.fullmatch(r"(ssdfast(?:\.\w+)+)(?::\w+)?", node.value)
                if match and match.group(1) in modules:
                    used.add(match.group(1))
    return used


def test_the_top_level_of_the_package_is_small():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= TOP_LEVEL_LIMIT, f"{len(top)} modules at the top of ssdfast/: {', '.join(top)}"


def test_every_module_is_used_by_the_package_or_a_tool():
    names = module_names()
    used = references(sorted((ROOT / "tools").glob("*.py")))
    for name, path in names.items():  # what each module uses, other than itself
        used |= references([path]) - {name}
    packages = {name for name, path in names.items() if path.name == "__init__.py"}
    unused = sorted(name for name in names if name not in used and name not in packages)
    assert not unused, f"modules only tests or benchmarks import (move them there): {unused}"


def package_rows(readme: str) -> list[tuple[str | None, list[str]]]:
    """README's "Map of the code" rows of the package -> [(the folder a row opens, or None), [file names in its
    first cell]]: from the row that opens **`ssdfast/`** to the first row that is not the package's (tools/)."""
    section = readme.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ")]
    start = next(i for i, cell in enumerate(cells) if cell.startswith("| **`ssdfast/`**"))
    end = next(i for i, cell in enumerate(cells) if cell.startswith("| `tools/"))
    rows = []
    for cell in cells[start:end]:
        folder = re.match(r"\| \*\*`([\w/]+)/`\*\*", cell)
        rows.append((folder.group(1) if folder else None, re.findall(r"`([\w.]+\.py)`", cell)))
    return rows


def test_the_readme_code_map_names_every_module_and_no_other():
    """Each `file.py` in the map's rows of the package (a row opens a folder with **`folder/`**, later rows
    without one stay in it) is a module there, and every module of the package is named once."""
    named, folder = [], None
    for opened, files in package_rows((ROOT / "README.md").read_text()):
        folder = opened or folder
        base = "ssdfast" if folder == "ssdfast" else f"ssdfast/{folder}"
        named += [f"{base}/{name}" for name in files]
    modules = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    assert not sorted(set(modules) - set(named)), "modules the README code map does not name"
    assert not sorted(set(named) - set(modules)), "the README code map names files that do not exist"
    assert len(named) == len(set(named)), "a module is named twice in the README code map"


def test_the_readme_fits_a_newcomer():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
