"""Every ```python block of README.md runs, in order, in one namespace (as a notebook would run them), and
prints what the ```text block right after it shows, where one does (numbers to the precision shown).

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


TEXT_AFTER = re.compile(r"\s*```text[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)")


def shown_outputs(text: str) -> dict[int, str]:
    """{line of a python block: the ```text block that follows it, with only blank lines between}."""
    shown = {}
    for m in FENCE.finditer(text):
        after = TEXT_AFTER.match(text, m.end() + 1)
        if after is not None:
            shown[text.count("\n", 0, m.start()) + 2] = after.group(1)
    return shown


def output_differences(printed: str, shown: str) -> list[str]:
    """How ``printed`` differs from ``shown``, line by line: the text must be the same, and each number the
    same to the decimals shown (``3.6`` stands for anything that rounds to it)."""
    got, want = printed.rstrip("\n").splitlines(), shown.rstrip("\n").splitlines()
    if len(got) != len(want):
        return [f"{len(got)} lines printed, {len(want)} shown"]
    out = []
    for n, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        g_parts, w_parts = NUMBER.split(g), NUMBER.split(w)
        same = len(g_parts) == len(w_parts) and all(
            gp == wp if i % 2 == 0 else _same_number(gp, wp)
            for i, (gp, wp) in enumerate(zip(g_parts, w_parts, strict=True))
        )
        if not same:
            out.append(f"line {n}: printed {g!r}, shown {w!r}")
    return out


def _same_number(got: str, shown: str) -> bool:
    decimals = len(shown.partition(".")[2])
    return abs(float(got) - float(shown)) <= 0.5 * 10.0**-decimals + 1e-12


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
SHOWN = shown_outputs(README.read_text(encoding="utf-8"))


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
    if line in SHOWN:
        assert output_differences(printed, SHOWN[line]) == []


def test_the_readme_shows_outputs() -> None:
    assert SHOWN, "no python block of README.md is followed by the output it prints"


def test_shown_outputs_are_compared_to_their_precision() -> None:
    text = "```python\nprint(1)\n```\n\n```text\nd1 3.6 ok\n```\n```python\nx = 1\n```\nno output\n"
    assert shown_outputs(text) == {2: "d1 3.6 ok\n"}
    assert output_differences("d1 3.5972 ok\n", "d1 3.6 ok\n") == []
    assert output_differences("d1 3.66 ok\n", "d1 3.6 ok\n") == [
        "line 1: printed 'd1 3.66 ok', shown 'd1 3.6 ok'"
    ]
    assert output_differences("d2 3.6 ok\n", "d1 3.6 ok\n") != []
    assert output_differences("d1 3.6 ok\nmore\n", "d1 3.6 ok\n") == ["2 lines printed, 1 shown"]


def test_a_broken_block_fails(tmp_path: Path) -> None:
    """The runner does not swallow errors: a block that raises propagates its exception."""
    ns: dict = {}
    assert _run("print(1 + 1)\n", "x", ns) == "2\n"
    with pytest.raises(NameError):
        _run("undefined_name\n", "README.md:1", ns)
    with pytest.raises(SyntaxError):
        _run("def broken(:\n", "README.md:1", ns)
