"""Strict readers for BEIR folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

A BEIR folder holds::

    corpus.jsonl      {"_id": "...", "title": "...", "text": "..."} per line
    queries.jsonl     {"_id": "...", "text": "..."} per line
    qrels/test.tsv    header ``query-id<TAB>corpus-id<TAB>score``, then one judgement per line

What each file may hold is the input contract of :mod:`keytok.data.contract`; every fault raises
:class:`~keytok.errors.KeytokError` with one line naming the file, the line number (1-based) and the fault, so
a user can open the file and fix it. :func:`check_beir` checks a whole folder before any model time is spent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from keytok.data.contract import (
    check_file,
    check_id,
    id_field,
    iter_jsonl,
    iter_text_lines,
    parse_grade,
    text_field,
    warn,
)
from keytok.errors import KeytokError
from keytok.utils.hashing import sha256_file

__all__ = [
    "BeirPaths",
    "BeirSummary",
    "Document",
    "check_beir",
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


def _corpus_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return resolve_beir(p).corpus if p.is_dir() else p


def _records(file: Path, what: str) -> Iterator[tuple[str, str, dict]]:
    """``(where, id, object)`` per record of a BEIR JSON-lines file; ids checked and unique within the file."""
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(file, what):
        where = f"{file} line {lineno}"
        record_id = id_field(obj, where)
        if record_id in first_line:
            raise KeytokError(f"{where}: duplicate _id '{record_id}' (first on line {first_line[record_id]})")
        first_line[record_id] = lineno
        yield where, record_id, obj


def load_corpus(path: str | os.PathLike[str], *, on_empty: EmptyPolicy = "error") -> list[Document]:
    """Read a BEIR corpus (a BEIR folder or a ``corpus.jsonl``) in file order.

    Raises KeytokError naming file and line for any fault of :mod:`keytok.data.contract` (a bad line, a
    missing, invalid or duplicate ``_id``, a ``text`` or ``title`` that is not a string) or, with the default
    ``on_empty="error"``, a document whose title and text are both empty.

    ``on_empty="keep"`` keeps such documents (Cranfield ships two, ids 471 and 995, and 995 is judged relevant,
    so a faithful evaluation keeps all 1,400); ``on_empty="skip"`` drops them.
    """
    if on_empty not in ("error", "keep", "skip"):
        raise ValueError(f"on_empty must be 'error', 'keep' or 'skip', not {on_empty!r}")
    file = _corpus_file(path)
    docs: list[Document] = []
    for where, doc_id, obj in _records(file, "corpus"):
        text = text_field(obj, "text", where, required=False)
        title = text_field(obj, "title", where, required=False)
        if not title.strip() and not text.strip():
            if on_empty == "skip":
                continue
            if on_empty == "error":
                raise KeytokError(f"{where}: document '{doc_id}' has empty text and title")
        docs.append(Document(id=doc_id, text=text, title=title))
    return docs


def _queries_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    # A folder needs no corpus here: a queries-only folder is enough to read queries.
    return p / "queries.jsonl" if p.is_dir() else p


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read BEIR queries (a BEIR folder or a ``queries.jsonl``) as ``{query_id: text}`` in file order.

    All queries of the file are returned, whatever split they belong to; select a split with the keys of
    :func:`load_qrels`. Validation is that of :func:`load_corpus`; a query needs a non-empty ``text``.
    """
    queries: dict[str, str] = {}
    for where, qid, obj in _records(_queries_file(path), "queries"):
        text = text_field(obj, "text", where, required=True)
        if not text.strip():
            raise KeytokError(f"{where}: query '{qid}' has empty text")
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


def load_qrels(path: str | os.PathLike[str], split: str = "test") -> dict[str, dict[str, int]]:
    """Read relevance judgements as ``{query_id: {doc_id: grade}}``.

    ``path`` is a BEIR folder (reads ``qrels/{split}.tsv``), a qrels folder (reads ``{split}.tsv``) or a
    ``.tsv`` file. Lines are ``query-id<TAB>corpus-id<TAB>score``; the header line, when present, is skipped.
    Raises KeytokError for a missing or empty file, a line without exactly three tab-separated columns, an
    id the contract refuses, a non-integer score, or the same (query, document) judged twice.
    """
    file = _qrels_file(Path(path), split)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, line in iter_text_lines(file, "qrels"):
        where = f"{file} line {lineno}"
        cols = line.split("\t")
        if first:
            first = False
            if [c.strip().lower() for c in cols[:2]] == ["query-id", "corpus-id"]:
                continue
        if len(cols) != 3:
            raise KeytokError(
                f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}"
            )
        qid = check_id(cols[0].strip(), where, "query-id")
        did = check_id(cols[1].strip(), where, "corpus-id")
        score = parse_grade(cols[2].strip(), where)
        judged = qrels.setdefault(qid, {})
        if did in judged:
            raise KeytokError(f"{where}: query '{qid}' judges document '{did}' twice")
        judged[did] = score
    if not qrels:
        raise KeytokError(f"{file}: qrels file has a header but no judgements")
    return qrels


@dataclass(frozen=True)
class BeirSummary:
    """What :func:`check_beir` read: counts per part, and the splits whose qrels were checked."""

    root: Path
    docs: int | None
    queries: int | None
    judged: dict[str, int]

    def describe(self) -> str:
        """One line for a terminal."""
        parts = []
        if self.docs is not None:
            parts.append(f"{self.docs} documents")
        if self.queries is not None:
            parts.append(f"{self.queries} queries")
        parts += [f"qrels/{s}.tsv: {n} judgements" for s, n in self.judged.items()]
        return f"{self.root}: " + ", ".join(parts)


def check_beir(
    path: str | os.PathLike[str],
    *,
    corpus: bool = True,
    queries: bool | None = None,
    splits: list[str] | None = None,
    on_empty: EmptyPolicy = "keep",
) -> BeirSummary:
    """Read and check the parts of a BEIR folder a command will read, before it spends any model time.

    ``corpus``: check ``corpus.jsonl``. ``queries``: check ``queries.jsonl`` (``None``: when the folder has
    one). ``splits``: the qrels splits to check (``None``: every ``qrels/*.tsv`` the folder has). Raises the
    first fault as a one-line :class:`KeytokError`; warns (:class:`~keytok.errors.KeytokWarning`) about judged
    queries or documents the folder does not contain.
    """
    paths = resolve_beir(path) if corpus else None
    if paths is not None:
        root = paths.root
    else:
        root = Path(path).parent if Path(path).is_file() else Path(path)
        if not root.is_dir():
            raise KeytokError(f"{path}: no such file or folder")
    queries_file = root / "queries.jsonl"
    doc_ids = {d.id for d in load_corpus(paths.corpus, on_empty=on_empty)} if paths is not None else None
    want_queries = queries_file.is_file() if queries is None else queries
    query_ids = set(load_queries(queries_file)) if want_queries else None
    if splits is None:
        splits = sorted(f.stem for f in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
    judged: dict[str, int] = {}
    for split in splits:
        qrels = load_qrels(root, split)
        judged[split] = sum(len(d) for d in qrels.values())
        name = f"{root / 'qrels' / (split + '.tsv')}"
        if query_ids is not None:
            missing = [q for q in qrels if q not in query_ids]
            if missing:
                warn(
                    f"{name}: {len(missing)} judged queries are not in queries.jsonl (first: '{missing[0]}'); "
                    "they cannot be searched"
                )
        if doc_ids is not None:
            absent = sorted({d for judged_docs in qrels.values() for d in judged_docs if d not in doc_ids})
            if absent:
                warn(
                    f"{name}: {len(absent)} judged documents are not in the corpus (first: '{absent[0]}'); "
                    "they count as never retrieved"
                )
    return BeirSummary(
        root=root,
        docs=None if doc_ids is None else len(doc_ids),
        queries=None if query_ids is None else len(query_ids),
        judged=judged,
    )


def corpus_checksum(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the corpus file's bytes (a BEIR folder or a ``corpus.jsonl``), used to key caches."""
    file = _corpus_file(path)
    check_file(file, "corpus")
    return sha256_file(file)
