"""Strict readers for BEIR folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

A BEIR folder holds::

    corpus.jsonl      {"_id": "...", "title": "...", "text": "..."} per line
    queries.jsonl     {"_id": "...", "text": "..."} per line
    qrels/test.tsv    header ``query-id<TAB>corpus-id<TAB>score``, then one judgement per line

Every fault in these files raises :class:`~keytok.errors.KeytokError` with one line naming the file, the line
number (1-based) and the fault, so a user can open the file and fix it. Blank lines are skipped everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from keytok.errors import KeytokError
from keytok.utils.hashing import sha256_file

__all__ = [
    "BeirPaths",
    "Document",
    "corpus_checksum",
    "join_title",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "resolve_beir",
]

EmptyPolicy = Literal["error", "keep", "skip"]

# Sentence-final punctuation after which a title needs no added full stop.
_TITLE_END = (".", "!", "?", ":", ";")


def join_title(title: str, text: str) -> str:
    """Join a title and a body the way :attr:`Document.full_text` does.

    * no title: the body alone;
    * no body: the title alone;
    * the body already starts with the title (Cranfield repeats it): the body alone, so the title does not
      weigh twice;
    * the title ends in sentence punctuation (SciFact titles end in "."): ``title + " " + text``;
    * otherwise ``title + ". " + text``, so the title reads as its own sentence to a language model.
    """
    title = title.strip()
    text = text.strip()
    if not title:
        return text
    if not text:
        return title
    if text.lower().startswith(title.lower()):
        return text
    sep = " " if title.endswith(_TITLE_END) else ". "
    return f"{title}{sep}{text}"


@dataclass(frozen=True)
class Document:
    """One corpus document: its id, body text and optional title."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and body as one string (see :func:`join_title` for the joining rule)."""
        return join_title(self.title, self.text)


@dataclass(frozen=True)
class BeirPaths:
    """Where the parts of one BEIR data set live. Files are not checked to exist until read."""

    root: Path
    corpus: Path
    queries: Path
    qrels_dir: Path

    def qrels(self, split: str = "test") -> Path:
        """Path of the qrels file for ``split``."""
        return self.qrels_dir / f"{split}.tsv"


def resolve_beir(path: str | os.PathLike[str]) -> BeirPaths:
    """Locate the parts of a BEIR data set from its folder or from its ``corpus.jsonl``.

    A file argument is taken as the corpus; queries and qrels are then looked for beside it.
    """
    p = Path(path)
    if p.is_dir():
        corpus = p / "corpus.jsonl"
        if not corpus.is_file():
            raise KeytokError(f"{p}: not a BEIR folder (no corpus.jsonl in it)")
        root = p
    elif p.is_file():
        corpus = p
        root = p.parent
    else:
        raise KeytokError(f"{p}: no such file or folder")
    return BeirPaths(root=root, corpus=corpus, queries=root / "queries.jsonl", qrels_dir=root / "qrels")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise KeytokError(f"{path}: {what} file not found")
    if not path.is_file():
        raise KeytokError(f"{path}: {what} is not a regular file")


def iter_text_lines(path: Path, what: str = "input") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each non-blank line of a UTF-8 file, without the line ending.

    Decoding is per line so that a bad byte is reported with its line; a UTF-8 byte-order mark on the first line
    is dropped. Raises KeytokError for a missing file, non-UTF-8 bytes, or a file with no non-blank line.
    """
    _check_file(path, what)
    seen = False
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise KeytokError(
                    f"{path} line {lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            seen = True
            yield lineno, line
    if not seen:
        raise KeytokError(f"{path}: {what} file is empty")


def iter_jsonl(path: Path, what: str = "input") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file; each must be an object."""
    for lineno, line in iter_text_lines(path, what):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KeytokError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise KeytokError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _str_field(obj: dict[str, Any], key: str, path: Path, lineno: int) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise KeytokError(f"{path} line {lineno}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def _id_field(obj: dict[str, Any], path: Path, lineno: int) -> str:
    if "_id" not in obj:
        raise KeytokError(f"{path} line {lineno}: missing '_id'")
    value = obj["_id"]
    # Some BEIR exports write numeric ids; they are the same ids as strings in the qrels.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise KeytokError(f"{path} line {lineno}: '_id' must be a string, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise KeytokError(f"{path} line {lineno}: empty '_id'")
    return value


def _corpus_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return resolve_beir(p).corpus if p.is_dir() else p


def load_corpus(path: str | os.PathLike[str], *, on_empty: EmptyPolicy = "error") -> list[Document]:
    """Read a BEIR corpus (a BEIR folder or a ``corpus.jsonl``) in file order.

    Raises KeytokError naming file and line for: a missing or empty file, non-UTF-8 bytes, a line that is not a
    JSON object, a missing or empty ``_id``, a duplicate ``_id``, non-string ``title``/``text``, or (with the
    default ``on_empty="error"``) a document whose title and text are both empty.

    ``on_empty="keep"`` keeps such documents (Cranfield ships two, ids 471 and 995, and 995 is judged relevant,
    so a faithful evaluation keeps all 1,400); ``on_empty="skip"`` drops them.
    """
    if on_empty not in ("error", "keep", "skip"):
        raise ValueError(f"on_empty must be 'error', 'keep' or 'skip', not {on_empty!r}")
    file = _corpus_file(path)
    docs: list[Document] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(file, "corpus"):
        doc_id = _id_field(obj, file, lineno)
        if doc_id in first_line:
            raise KeytokError(
                f"{file} line {lineno}: duplicate _id '{doc_id}' (first on line {first_line[doc_id]})"
            )
        first_line[doc_id] = lineno
        title = _str_field(obj, "title", file, lineno)
        text = _str_field(obj, "text", file, lineno)
        if not title.strip() and not text.strip():
            if on_empty == "skip":
                continue
            if on_empty == "error":
                raise KeytokError(f"{file} line {lineno}: document '{doc_id}' has empty text and title")
        docs.append(Document(id=doc_id, text=text, title=title))
    return docs


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read BEIR queries (a BEIR folder or a ``queries.jsonl``) as ``{query_id: text}`` in file order.

    All queries of the file are returned, whatever split they belong to; select a split with the keys of
    :func:`load_qrels`. Validation is that of :func:`load_corpus` (a query needs a non-empty ``text``).
    """
    p = Path(path)
    # A folder needs no corpus here: a queries-only folder is enough to read queries.
    file = p / "queries.jsonl" if p.is_dir() else p
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(file, "queries"):
        qid = _id_field(obj, file, lineno)
        if qid in first_line:
            raise KeytokError(
                f"{file} line {lineno}: duplicate _id '{qid}' (first on line {first_line[qid]})"
            )
        first_line[qid] = lineno
        text = _str_field(obj, "text", file, lineno)
        if not text.strip():
            raise KeytokError(f"{file} line {lineno}: query '{qid}' has empty text")
        queries[qid] = text
    return queries


def _qrels_file(path: Path, split: str) -> Path:
    if path.is_file() or path.suffix == ".tsv":
        return path
    if path.is_dir():
        for candidate in (path / "qrels" / f"{split}.tsv", path / f"{split}.tsv"):
            if candidate.is_file():
                return candidate
        raise KeytokError(f"{path}: no qrels for split '{split}' (looked for qrels/{split}.tsv)")
    raise KeytokError(f"{path}: no such file or folder")


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        pass
    # "1.0" is an integer grade written as a float by some exporters; "0.5" is not a grade.
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def load_qrels(path: str | os.PathLike[str], split: str = "test") -> dict[str, dict[str, int]]:
    """Read relevance judgements as ``{query_id: {doc_id: grade}}``.

    ``path`` is a BEIR folder (reads ``qrels/{split}.tsv``), a qrels folder (reads ``{split}.tsv``) or a
    ``.tsv`` file. Lines are ``query-id<TAB>corpus-id<TAB>score``; the header line, when present, is skipped.
    Raises KeytokError for a missing or empty file, a line without exactly three tab-separated columns, an
    empty id, a non-integer score, or the same (query, document) judged twice.
    """
    file = _qrels_file(Path(path), split)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, line in iter_text_lines(file, "qrels"):
        cols = line.split("\t")
        if first:
            first = False
            if [c.strip().lower() for c in cols[:2]] == ["query-id", "corpus-id"]:
                continue
        if len(cols) != 3:
            raise KeytokError(
                f"{file} line {lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}"
            )
        qid, did, score_s = (c.strip() for c in cols)
        if not qid or not did:
            raise KeytokError(f"{file} line {lineno}: empty query-id or corpus-id")
        score = _parse_int(score_s)
        if score is None:
            raise KeytokError(f"{file} line {lineno}: score '{score_s}' is not an integer")
        judged = qrels.setdefault(qid, {})
        if did in judged:
            raise KeytokError(f"{file} line {lineno}: query '{qid}' judges document '{did}' twice")
        judged[did] = score
    if not qrels:
        raise KeytokError(f"{file}: qrels file has a header but no judgements")
    return qrels


def corpus_checksum(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the corpus file's bytes (a BEIR folder or a ``corpus.jsonl``), used to key caches."""
    file = _corpus_file(path)
    _check_file(file, "corpus")
    return sha256_file(file)
