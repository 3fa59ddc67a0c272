"""Every ```python block of README.md runs, in order, in one namespace (as a notebook would run them).

The blocks use the packaged smollm2-135m on a handful of short texts. They run in a temporary working
directory, with the embedding cache there too, so nothing is written to the project or the user's cache.
A block that raises fails its test; the blocks after it fail too, since they build on it.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced python block of a Markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


def test_block_extraction_finds_each_block() -> None:
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x + 1\nprint(y)\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x + 1\nprint(y)\n")]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory):
    """One namespace for all blocks, a temporary working directory and embedding cache for the module."""
    work = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr("keytok.encoding.cache.default_cache_root", lambda: work / "embedding-cache")
        yield {"__name__": "__readme__"}


def _run(code: str, where: str, ns: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), ns)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, namespace: dict) -> None:
    if namespace.get("__failed__"):
        pytest.fail(f"an earlier block failed ({namespace['__failed__']}); this one builds on it")
    try:
        printed = _run(code, f"README.md:{line}", namespace)
    except BaseException:
        namespace["__failed__"] = f"README.md:{line}"
        raise
    print(printed)


def test_a_broken_block_fails(tmp_path: Path) -> None:
    """The runner does not swallow errors: a block that raises propagates its exception."""
    ns: dict = {}
    assert _run("print(1 + 1)\n", "x", ns) == "2\n"
    with pytest.raises(NameError):
        _run("undefined_name\n", "README.md:1", ns)
    with pytest.raises(SyntaxError):
        _run("def broken(:\n", "README.md:1", ns)
