"""Build keytok's API reference from the docstrings with pdoc: ``make docs`` writes ``docs/api/``.

The reference covers the public API, the names in ``keytok.__all__``. The build fails (exit status 1) on any
warning pdoc gives, and on any public name, or public method or property of a public class, that has no
docstring or lacks type hints. ``python docs/build.py --out DIR`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _members(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties a class defines itself (inherited and dataclass-made ones aside)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            out.append((f"{cls.__name__}.{name}", value))
    return out


def _hint_faults(name: str, func: object) -> list[str]:
    fn = func.fget if isinstance(func, property) else func
    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    faults = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.annotation is inspect.Parameter.empty:
            faults.append(f"{name}: parameter {p.name!r} has no type hint")
    if sig.return_annotation is inspect.Signature.empty:
        faults.append(f"{name}: no return type hint")
    return faults


def undocumented() -> list[str]:
    """Every public name of ``keytok`` (and public member of a public class) without a docstring or type hints."""
    import keytok

    faults = []
    for name in keytok.__all__:
        obj = getattr(keytok, name)
        if not (inspect.getdoc(obj) or "").strip():
            faults.append(f"keytok.{name}: no docstring")
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                continue
            for member, value in _members(obj):
                if member.endswith(".__init__"):
                    if inspect.isfunction(value):
                        faults += _hint_faults(f"keytok.{member}", value)
                    continue
                if not (inspect.getdoc(value) or "").strip():
                    faults.append(f"keytok.{member}: no docstring")
                faults += _hint_faults(f"keytok.{member}", value)
        elif callable(obj):
            faults += _hint_faults(f"keytok.{name}", obj)
    return faults


def build(out: Path) -> list[str]:
    """Write the HTML reference into ``out``; returns pdoc's warnings and the undocumented names."""
    import pdoc
    import pdoc.render

    import keytok

    for name in keytok.__all__:  # resolve the lazily imported names, so that pdoc sees them
        getattr(keytok, name)
    problems = undocumented()
    pdoc.render.configure(docformat="restructuredtext", footer_text=f"keytok {keytok.__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc("keytok", output_directory=out)
    problems += [f"pdoc: {w.category.__name__}: {w.message}" for w in caught]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "api", help="output folder (default: docs/api)")
    args = p.parse_args(argv)
    problems = build(args.out)
    for line in problems:
        print(f"docs: {line}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} problem(s); the reference in {args.out} is incomplete", file=sys.stderr)
        return 1
    print(f"API reference written to {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
