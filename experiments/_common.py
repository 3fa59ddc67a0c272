"""What every experiment script shares: the command that made a result, atomic result files, ``main``.

Every result file records the command that wrote it: Markdown pages in a ``Command:`` line
(:func:`command_line`), JSON files in a ``"command"`` field (:func:`write_json`). Files are written
atomically (:mod:`keytok.utils.atomic`), so a script stopped halfway leaves the previous result, not half
a table. :func:`run_script` wraps a script's ``main``: a :class:`keytok.errors.KeytokError` is printed as one line
and exits 1, like the ``keytok`` command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keytok.errors import KeytokError
from keytok.utils.atomic import atomic_path, atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def add_model_args(ap: argparse.ArgumentParser, max_length: int = 256) -> None:
    """--model, --method and --max-length, with the defaults the sweeps use."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="prompteol")
    ap.add_argument("--max-length", type=int, default=max_length)


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """``python experiments/SCRIPT ARGS``: the command line that ran ``script`` (a ``__file__``) with ``argv``
    (default: this process's arguments), shell-quoted so that it can be pasted back."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"experiments/{Path(script).name}", *args])


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The Markdown line that names the command: ``Command: `python experiments/...` ``."""
    return f"Command: `{command(script, argv)}`"


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


def write_page(path: str | Path, lines: list[str], script: str, argv: Sequence[str] | None = None) -> str:
    """A Markdown page of ``lines`` and its ``Command:`` line, printed and written atomically to ``path``."""
    text = "\n".join([*lines, "", command_line(script, argv), ""])
    print(text)
    write_text(path, text)
    return text


def write_json(path: str | Path, payload: Mapping[str, Any], cmd: str, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically, with the ``command`` that made it first."""
    return write_text(path, json.dumps({"command": cmd, **payload}, indent=indent, default=str))


def run_script(main: Callable[..., int | None]) -> None:
    """``raise SystemExit(main())``, with a KeytokError as one ``error:`` line and exit 1."""
    try:
        code = main()
    except KeytokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(int(code or 0))


def write_npz(path: str | Path, **arrays: Any) -> Path:
    """Write ``arrays`` as an .npz at ``path`` atomically (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def npz_rows(npz: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The float32 rows of an ``ids`` + ``emb`` .npz file for ``ids``, in that order; an id the file lacks gets
    zeros (the row of an empty text). The files of ``bench_gpu.py --save-embeddings``."""
    with np.load(npz, allow_pickle=False) as f:
        pos = {str(i): r for r, i in enumerate(f["ids"])}
        emb = f["emb"].astype(np.float32)
    out = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
    for k, i in enumerate(ids):
        if i in pos:
            out[k] = emb[pos[i]]
    return out


def is_dev(qid: str) -> bool:
    """The held-out fifth of a collection's train queries ("dev20"; the rest is "train80"): sha256 of the id
    mod 5, so that every machine splits alike."""
    return int(hashlib.sha256(qid.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0


# Everyday texts from outside every data set of the repo, one a line: the first three from issue 23, the
# other ten the ones tests/test_default_model.py holds the default's key tokens to.
EVERYDAY_TEXTS = (Path(__file__).parent / "everyday_texts.txt").read_text(encoding="utf-8").splitlines()
