"""Read a plain list of texts from a ``.txt`` file, a ``.jsonl`` file or a BEIR folder."""

from __future__ import annotations

import os
from pathlib import Path

from keytok.data.beir import join_title, load_corpus
from keytok.data.contract import iter_jsonl, iter_text_lines, text_field
from keytok.errors import KeytokError

__all__ = ["load_texts"]


def load_texts(path: str | os.PathLike[str], *, skip_empty: bool = False) -> list[str]:
    """Texts from ``path``, in file order.

    * a folder: a BEIR folder; the corpus documents' :attr:`~keytok.data.beir.Document.full_text`;
    * ``*.jsonl``: one JSON object per line with a string field ``text``; a ``title`` field, when present, is
      joined in front as :func:`~keytok.data.beir.join_title` does;
    * ``*.txt`` (or no suffix): one text per line, surrounding whitespace stripped.

    Blank lines are skipped. An empty text in a ``.jsonl`` file or an empty BEIR document is an error unless
    ``skip_empty`` is true, when it is dropped (texts here feed alignment analysis, where an empty text has
    nothing to align). Faults are those of :mod:`keytok.data.contract` (a missing or empty file, non-UTF-8
    bytes, a bad JSON line, a missing or non-string ``text``, an empty text) and an unsupported suffix.
    """
    p = Path(path)
    if p.is_dir():
        return [d.full_text for d in load_corpus(p, on_empty="skip" if skip_empty else "error")]
    if not p.exists():
        raise KeytokError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".jsonl":
        texts: list[str] = []
        for lineno, obj in iter_jsonl(p, "texts"):
            where = f"{p} line {lineno}"
            joined = join_title(
                text_field(obj, "title", where, required=False), text_field(obj, "text", where, required=True)
            )
            if not joined:
                if skip_empty:
                    continue
                raise KeytokError(f"{where}: empty text")
            texts.append(joined)
        return texts
    if p.suffix.lower() in {".txt", ""}:
        return [line.strip() for _, line in iter_text_lines(p, "texts")]
    raise KeytokError(f"{p}: unsupported file type '{p.suffix}' (expected .txt, .jsonl or a BEIR folder)")
