"""The shape of the package: no function in keytok/ longer than 100 lines (issue 17), and no module inside
keytok/ imports the package root, which is the users' face and imports the layers itself (issue 25)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "keytok"
LIMIT = 100


def _long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_over_100_lines():
    assert _long_functions(PACKAGE) == []


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert _long_functions(tmp_path / "pkg") == ["pkg/m.py:1 long (101 lines)"]


def _root_imports(root: Path) -> list[str]:
    """Modules under ``root`` (a package folder) that import the package itself rather than the module where a
    name lives; the package's own ``__init__.py`` is the face and is not counted."""
    name, found = root.name, []
    for path in sorted(root.rglob("*.py")):
        if path == root / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == name:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} from {name} import ...")
            elif isinstance(node, ast.Import) and any(a.name == name for a in node.names):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} import {name}")
    return found


def test_no_inner_module_imports_the_package_root():
    assert _root_imports(PACKAGE) == []


def test_the_check_sees_a_root_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub.m import f\n")
    (pkg / "sub" / "m.py").write_text(
        "def f():\n    from pkg import g\n    import pkg\n    from pkg.sub import x\n"
    )
    assert _root_imports(pkg) == ["pkg/sub/m.py:2 from pkg import ...", "pkg/sub/m.py:3 import pkg"]
