"""Issue 25: a kind's name is written only in its own module and the registry (keytok/pipeline/kinds/).

Every string literal of keytok/ is read from the syntax tree; one that names a kind, or a system made of
kinds (``bm25+sparse:expanded``), counts. A module-level constant of an engine (``KIND = "sparse"``: the
format name of a storage folder, or a key of its manifest) names the storage's format, not the pipeline's
kind, and is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

from keytok.pipeline.kinds import KINDS, REGISTRY, SYSTEM_ALIASES
from keytok.representations.sparse import QUERY_MODES

PACKAGE = Path(__file__).resolve().parents[1] / "keytok"
REGISTRY_ROOM = PACKAGE / "pipeline" / "kinds"


def _names_a_kind(text: str) -> bool:
    """Whether ``text`` is a kind's name or a system made only of kinds (with query modes) and aliases."""
    if text in SYSTEM_ALIASES:
        return True
    parts = text.split("+")
    for part in parts:
        engine, _, mode = part.partition(":")
        if engine not in KINDS or (mode and mode not in QUERY_MODES):
            return False
    return True


def _storage_format(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """``NAME = "..."`` at the top of a module: a constant (in the engines, a storage format's name)."""
    parent = parents.get(node)
    return (
        isinstance(parent, ast.Assign)
        and all(getattr(t, "id", "").isupper() for t in parent.targets)
        and isinstance(parents.get(parent), ast.Module)
    )


def kind_literals(root: Path, registry: Path, storage: Path) -> list[str]:
    """``path:line 'literal'`` of every kind-naming literal outside ``registry`` (and the format constants of
    the ``storage`` folder)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if registry in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if (
                literal
                and _names_a_kind(node.value)
                and not (storage in path.parents and _storage_format(node, parents))
            ):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.value!r}")
    return found


def test_kind_names_live_in_the_registry_only():
    assert kind_literals(PACKAGE, REGISTRY_ROOM, PACKAGE / "engines") == []


def test_the_count_sees_a_kind_name(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "reg").mkdir(parents=True)
    (pkg / "store").mkdir()
    (pkg / "reg" / "k.py").write_text('NAME = "sparse"\n')
    (pkg / "store" / "s.py").write_text('KIND = "dense"\ndef f():\n    return "dense"\n')
    (pkg / "m.py").write_text(
        'KIND = "dense"\nx = "bm25+sparse:expanded"\ny = "bm25 (lucene)"\nz = "bm25+keytok"\n'
    )
    assert kind_literals(pkg, pkg / "reg", pkg / "store") == [
        "pkg/m.py:1 'dense'",
        "pkg/m.py:2 'bm25+sparse:expanded'",
        "pkg/m.py:4 'bm25+keytok'",
        "pkg/store/s.py:3 'dense'",
    ]


def test_every_kind_declares_what_the_pipeline_asks():
    forms = {"text", "embedding", "float sparse vector", "int sparse vector"}
    for name, kind in REGISTRY.items():
        assert kind.name == name and kind.query_form in forms
        assert kind.native is None or kind.native in REGISTRY
        assert kind.built_from is None or kind.built_from in REGISTRY
        assert kind.engine_class().__name__.endswith("Index")
