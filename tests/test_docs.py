"""The API reference (``make docs``: pdoc over ``keytok.__all__``) builds without warnings, every public name
has a docstring and type hints, and ``help(keytok)`` lists the public API."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keytok

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "docs" / "build.py"


def _docs_module():
    spec = importlib.util.spec_from_file_location("keytok_docs_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "api"
    run = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "docs:" not in run.stderr, run.stderr
    page = (out / "keytok.html").read_text(encoding="utf-8")
    assert (out / "index.html").is_file()
    for name in keytok.__all__:
        assert re.search(rf'id="{name}"', page), f"{name} is not in the reference"
    for member in ("KeyTokenModel.encode_query", "Retriever.search", "SparseIndex.build"):
        assert f'id="{member}"' in page


def test_every_public_name_has_a_docstring_and_type_hints() -> None:
    assert _docs_module().undocumented() == []


def test_the_check_finds_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def bare(x, y: int = 1):
        return x

    class Thing:
        """Documented."""

        def method(self, a: int) -> int:
            return a

        @property
        def size(self) -> int:
            """Documented and typed."""
            return 1

    monkeypatch.setattr(keytok, "bare", bare, raising=False)
    monkeypatch.setattr(keytok, "Thing", Thing, raising=False)
    monkeypatch.setattr(keytok, "__all__", [*keytok.__all__, "bare", "Thing"])
    assert sorted(_docs_module().undocumented()) == [
        "keytok.Thing.method: no docstring",
        "keytok.bare: no docstring",
        "keytok.bare: no return type hint",
        "keytok.bare: parameter 'x' has no type hint",
    ]


def test_help_lists_the_public_api() -> None:
    env = os.environ | {"PAGER": "cat", "MANPAGER": "cat", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-c", "import keytok; help(keytok)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    for name in keytok.__all__:
        assert re.search(rf"\b{name}\b", out), f"help(keytok) does not list {name}"
    assert "class KeyTokenModel" in out and "encode_document(" in out and "build_index(" in out


def test_make_docs_target_and_pdoc_in_the_test_extra() -> None:
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bdocs\b", make, re.MULTILINE)
    assert re.search(r"^docs:.*\n\t.*docs/build\.py", make, re.MULTILINE)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert any(line.strip().startswith("pdoc") for line in cfg["options.extras_require"]["test"].splitlines())
    assert "/docs/api/" in (ROOT / ".gitignore").read_text().splitlines()
