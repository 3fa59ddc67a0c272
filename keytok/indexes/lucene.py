"""Lucene indexes through Anserini (the ``lucene`` extra): integer impact indexes and BM25.

**Impact index** (:class:`LuceneImpactIndex`): each document is a sparse vector of non-negative *integer*
impacts over a token vocabulary. It is exported as an Anserini ``JsonVectorCollection``, one JSON object per
line::

    {"id": "<doc id>", "contents": "", "vector": {"t17": 3, "t2045": 12}}

Token keys are ``"t"`` + the decimal token id, never the token's text: any vocabulary (byte-level BPE pieces,
SentencePiece "▁" pieces, tokens with spaces or quotes, 262k-entry Gemma vocabularies) then indexes without
escaping or analysis problems. The index is built with ``-impact -pretokenized``, so a document's impact is
stored as the term frequency and the score of a document is exactly ``Σ_t q_t · d_t`` over shared tokens
(computed by Lucene in float32: exact while a score stays below 2**24 = 16,777,216).

Integers only, on both sides: Anserini truncates float weights (2.7 → 2) and silently drops zeros, so a float
input raises :class:`KeytokError` unless every value is already a whole number; quantise first (e.g. with
``keytok.indexes.sparse.quantize``). Rounding here would hide a wrong scale (weights in [0, 1] would round to
0 or 1), so keytok refuses instead of rounding.

Queries go straight to Anserini's ``SimpleImpactSearcher`` (the Java class behind pyserini's
``LuceneImpactSearcher``) as a ``{token: int}`` map. pyserini's Python wrapper is bypassed: its default
``min_idf=0`` drops a query token that occurs in *every* document (idf = 0), and importing it costs ≈ 18 s;
the direct call drops nothing (the same as ``LuceneImpactSearcher(index, encoder, min_idf=-1)`` with a
pass-through encoder).

**BM25 index** (:class:`LuceneBM25Index`): Anserini's defaults for the BEIR "flat" regressions: a
``JsonCollection`` whose ``contents`` is ``title + " " + text``, the default English analyzer (Porter stemmer,
Lucene's English stopwords removed), BM25 with k1 = 0.9, b = 0.4.

On disk an index is a folder: ``manifest.json`` plus ``lucene/`` (the Lucene files). Builds are atomic (built
in a temporary folder beside ``path`` and renamed into place); the exported collection is written inside that
temporary folder and deleted before the rename.

Batch results are ``(ids, scores)``: ``ids[i]`` lists the doc ids of query ``i`` best first (fewer than ``k``
when fewer documents match); ``scores`` is a float32 array ``[n_queries, k]``, padded with ``-inf``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from keytok.errors import KeytokError
from keytok.indexes.java import anserini_jar, jclass, require_lucene, run_index_collection
from keytok.utils.atomic import atomic_dir, atomic_write_text

__all__ = [
    "BM25_B",
    "BM25_K1",
    "TOKEN_PREFIX",
    "LuceneBM25Index",
    "LuceneImpactIndex",
    "token_key",
]

TOKEN_PREFIX = "t"
BM25_K1 = 0.9
BM25_B = 0.4
MANIFEST = "manifest.json"
LUCENE_DIR = "lucene"
FORMAT_VERSION = 1
_INT32_MAX = 2**31 - 1

SearchHits = list[tuple[str, float]]
BatchHits = tuple[list[list[str]], np.ndarray]


def token_key(token_id: int) -> str:
    """The Lucene term for token id ``token_id`` (``"t" + id``)."""
    return f"{TOKEN_PREFIX}{int(token_id)}"


class _DocLike(Protocol):
    id: str
    text: str


# --------------------------------------------------------------------------------------------- helpers
# TODO(lead): replace _write_manifest/_read_manifest with keytok.indexes.manifest.Manifest once it exists.
def _write_manifest(folder: Path, kind: str, **fields: Any) -> dict[str, Any]:
    manifest = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _read_manifest(path: Path, kind: str) -> dict[str, Any]:
    mfile = path / MANIFEST
    if not path.is_dir():
        raise KeytokError(f"{path}: no such index folder")
    if not mfile.is_file():
        raise KeytokError(f"{path}: not a keytok index (no {MANIFEST})")
    try:
        manifest = json.loads(mfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeytokError(f"{mfile}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        got = manifest.get("kind") if isinstance(manifest, dict) else None
        raise KeytokError(f"{path}: index kind is {got!r}, expected {kind!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise KeytokError(
            f"{path}: index format version {manifest.get('format_version')!r}, this keytok reads {FORMAT_VERSION}"
        )
    if not any((path / LUCENE_DIR).glob("segments_*")):
        raise KeytokError(f"{path}: the Lucene index files are missing ({LUCENE_DIR}/segments_*)")
    return manifest


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise KeytokError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise KeytokError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def _check_doc_ids(doc_ids: Sequence[str], what: str = "doc_ids") -> list[str]:
    ids = list(doc_ids)
    if not ids:
        raise KeytokError(f"{what} is empty: nothing to index")
    seen: set[str] = set()
    for i, d in enumerate(ids):
        if not isinstance(d, str) or not d.strip():
            raise KeytokError(f"{what}[{i}] is {d!r}: doc ids must be non-empty strings")
        if d in seen:
            raise KeytokError(f"{what}[{i}]: duplicate doc id {d!r}")
        seen.add(d)
    return ids


def _integer_values(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as int64, refusing NaN, negative, fractional or out-of-range values."""
    if data.dtype == np.bool_:
        return data.astype(np.int64)
    if np.issubdtype(data.dtype, np.integer):
        vals = data.astype(np.int64)
    elif np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise KeytokError(f"{what} contains NaN or infinite weights")
        if np.any(data != np.round(data)):
            raise KeytokError(
                f"{what} has fractional weights: Lucene impacts are integers (it would truncate them); "
                "quantise first, e.g. keytok.indexes.sparse.quantize"
            )
        if data.size and (data.max() > _INT32_MAX or data.min() < -_INT32_MAX):
            raise KeytokError(f"{what} has weights beyond ±{_INT32_MAX}: Lucene impacts are 32-bit")
        vals = data.astype(np.int64)
    else:
        raise KeytokError(f"{what} has dtype {data.dtype}: integer impacts expected")
    if vals.size and vals.min() < 0:
        raise KeytokError(f"{what} has negative weights: Lucene impacts must be ≥ 0")
    if vals.size and vals.max() > _INT32_MAX:
        raise KeytokError(f"{what} has weights above {_INT32_MAX}: Lucene impacts are 32-bit")
    return vals


def _as_int_csr(matrix: Any, what: str) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise KeytokError(f"{what} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix)
    vals = _integer_values(csr.data, what)
    csr = sp.csr_matrix((vals, csr.indices, csr.indptr), shape=csr.shape)
    csr.sum_duplicates()
    csr.eliminate_zeros()  # Anserini drops zero impacts anyway; removing them keeps the counts honest
    return csr


def _pad_batch(per_query: list[list[tuple[str, float]]], k: int) -> BatchHits:
    scores = np.full((len(per_query), k), -np.inf, dtype=np.float32)
    ids: list[list[str]] = []
    for i, hits in enumerate(per_query):
        ids.append([d for d, _ in hits])
        if hits:
            scores[i, : len(hits)] = [s for _, s in hits]
    return ids, scores


def _hits(java_hits: Any) -> SearchHits:
    return [(h.docid, float(h.score)) for h in java_hits]


def _split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, min(parts, n) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _run_batch(searcher: Any, queries: list[Any], k: int, threads: int) -> list[SearchHits]:
    jlist = jclass("java.util.ArrayList")
    qlist, qids = jlist(), jlist()
    for i, q in enumerate(queries):
        qlist.add(q)
        qids.add(str(i))
    results = searcher.batch_search(qlist, qids, k, threads)
    out: list[SearchHits] = [[] for _ in queries]
    for entry in results.entrySet().toArray():
        out[int(entry.getKey())] = _hits(entry.getValue())
    return out


class _LuceneBase:
    """Shared open/close logic of the two Lucene index kinds."""

    kind = ""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._searcher: Any = None

    @property
    def meta(self) -> dict[str, Any]:
        """The caller's metadata saved at build time."""
        return dict(self.manifest.get("meta", {}))

    @property
    def num_docs(self) -> int:
        """Documents in the Lucene index (documents with no tokens are not indexed)."""
        return int(self.manifest["num_indexed"])

    def _new_searcher(self) -> Any:
        raise NotImplementedError

    @property
    def searcher(self) -> Any:
        """The Anserini Java searcher, created on first use (this starts the JVM)."""
        if self._searcher is None:
            self._searcher = self._new_searcher()
        return self._searcher

    def close(self) -> None:
        """Release the Lucene reader (the JVM itself lives until the process exits)."""
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    def __enter__(self) -> _LuceneBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- impacts
class LuceneImpactIndex(_LuceneBase):
    """A Lucene impact index of integer token weights, searched by ``Σ q_t · d_t`` (see the module doc)."""

    kind = "lucene-impact"

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        doc_ids: Sequence[str],
        vectors: sp.spmatrix | sp.sparray,
        meta: Mapping[str, Any] | None = None,
        threads: int = 2,
    ) -> LuceneImpactIndex:
        """Index ``vectors`` (``n_docs × vocab``, non-negative integer impacts) under ``doc_ids`` at ``path``.

        ``meta`` (JSON-serialisable) is stored in the manifest. ``threads`` indexing threads (the collection is
        split into that many files). An existing index at ``path`` is replaced only when the build succeeds.
        Documents without any positive impact are not indexed (they could never match); the manifest counts
        them as ``num_empty``.
        """
        require_lucene()
        ids = _check_doc_ids(doc_ids)
        threads = _check_threads(threads)
        csr = _as_int_csr(vectors, "vectors")
        if csr.shape[0] != len(ids):
            raise KeytokError(f"vectors has {csr.shape[0]} rows but {len(ids)} doc ids were given")
        meta_dict = dict(meta or {})
        try:
            json.dumps(meta_dict)
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"meta is not JSON-serialisable ({exc})") from exc

        path = Path(path)
        start = time.perf_counter()
        with atomic_dir(path) as tmp:
            coll = tmp / ".collection"
            coll.mkdir()
            for part, (lo, hi) in enumerate(_split_rows(csr.shape[0], threads)):
                with open(coll / f"part{part:04d}.jsonl", "w", encoding="utf-8") as fh:
                    for row in range(lo, hi):
                        a, b = csr.indptr[row], csr.indptr[row + 1]
                        vec = ",".join(
                            f'"{TOKEN_PREFIX}{t}":{w}'
                            for t, w in zip(csr.indices[a:b].tolist(), csr.data[a:b].tolist(), strict=True)
                        )
                        fh.write(f'{{"id":{json.dumps(ids[row])},"contents":"","vector":{{{vec}}}}}\n')
            counters = run_index_collection(
                [
                    "-collection",
                    "JsonVectorCollection",
                    "-generator",
                    "DefaultLuceneDocumentGenerator",
                    "-input",
                    str(coll),
                    "-index",
                    str(tmp / LUCENE_DIR),
                    "-impact",
                    "-pretokenized",
                    "-optimize",
                ],
                threads=threads,
            )
            shutil.rmtree(coll)
            non_empty = int(np.count_nonzero(np.diff(csr.indptr)))
            if counters["indexed"] != non_empty:
                raise KeytokError(
                    f"{path}: Anserini indexed {counters['indexed']} documents, expected {non_empty}"
                )
            _write_manifest(
                tmp,
                cls.kind,
                num_docs=len(ids),
                num_indexed=counters["indexed"],
                num_empty=len(ids) - non_empty,
                vocab_size=int(csr.shape[1]),
                num_postings=int(csr.nnz),
                max_impact=int(csr.data.max()) if csr.nnz else 0,
                token_key=f"{TOKEN_PREFIX}<token id>",
                anserini_jar=anserini_jar().name,
                build_seconds=round(time.perf_counter() - start, 3),
                threads=threads,
                meta=meta_dict,
            )
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LuceneImpactIndex:
        """Open an index built by :meth:`build` (the JVM starts on the first search)."""
        require_lucene()
        path = Path(path)
        return cls(path, _read_manifest(path, cls.kind))

    @property
    def vocab_size(self) -> int:
        """Width of the token vocabulary the index was built with."""
        return int(self.manifest["vocab_size"])

    def _new_searcher(self) -> Any:
        return jclass("io.anserini.search.SimpleImpactSearcher")(str(self.path / LUCENE_DIR))

    def _query_pairs(self, query: Mapping[int, int] | sp.spmatrix | sp.sparray, what: str) -> list[tuple[int, int]]:
        if sp.issparse(query):
            csr = sp.csr_matrix(query)
            if csr.shape[0] != 1:
                raise KeytokError(f"{what} has {csr.shape[0]} rows: search() takes one query, use search_batch()")
            return self._csr_rows(csr, what)[0]
        if not isinstance(query, Mapping):
            raise KeytokError(f"{what} must be a dict {{token id: int weight}} or a 1-row scipy.sparse matrix")
        if not query:
            return []
        keys = list(query.keys())
        for t in keys:
            if isinstance(t, bool) or not isinstance(t, int | np.integer):
                raise KeytokError(f"{what} has token {t!r}: token ids must be integers")
        tok = np.asarray(keys, dtype=np.int64)
        try:
            raw = np.asarray(list(query.values()))
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"{what} has non-numeric weights ({exc})") from exc
        if raw.dtype == object or not np.issubdtype(raw.dtype, np.number):
            raise KeytokError(f"{what} has non-numeric weights")
        vals = _integer_values(raw, what)
        self._check_token_range(tok, what)
        keep = vals > 0
        return list(zip(tok[keep].tolist(), vals[keep].tolist(), strict=True))

    def _check_token_range(self, tok: np.ndarray, what: str) -> None:
        if tok.size and (tok.min() < 0 or tok.max() >= self.vocab_size):
            bad = int(tok.min()) if tok.min() < 0 else int(tok.max())
            raise KeytokError(f"{what} has token id {bad} outside the index vocabulary [0, {self.vocab_size})")

    def _csr_rows(self, csr: sp.csr_matrix, what: str) -> list[list[tuple[int, int]]]:
        if csr.shape[1] != self.vocab_size:
            raise KeytokError(
                f"{what} has {csr.shape[1]} columns but the index vocabulary has {self.vocab_size} tokens"
            )
        csr = _as_int_csr(csr, what)
        return [
            list(
                zip(
                    csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
                    csr.data[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
                    strict=True,
                )
            )
            for i in range(csr.shape[0])
        ]

    @staticmethod
    def _jmap(pairs: list[tuple[int, int]]) -> Any:
        jmap = jclass("java.util.HashMap")()
        jint = jclass("java.lang.Integer")
        for t, w in pairs:
            jmap.put(f"{TOKEN_PREFIX}{t}", jint(w))
        return jmap

    def search(self, query: Mapping[int, int] | sp.spmatrix | sp.sparray, k: int = 10) -> SearchHits:
        """Top-``k`` ``(doc_id, score)`` for one query: ``{token id: int weight}`` or a 1-row int sparse matrix.

        Zero weights are ignored; a query with no positive weight returns ``[]``. Ties are ordered by doc id.
        """
        k = _check_k(k)
        pairs = self._query_pairs(query, "query")
        if not pairs:
            return []
        return _hits(self.searcher.search(self._jmap(pairs), k))

    def search_batch(self, queries: sp.spmatrix | sp.sparray, k: int = 10, threads: int = 1) -> BatchHits:
        """Search every row of ``queries`` (``n × vocab`` integer sparse matrix) on ``threads`` Java threads.

        Returns ``(ids, scores)`` as described in the module doc.
        """
        k = _check_k(k)
        threads = _check_threads(threads)
        if not sp.issparse(queries):
            raise KeytokError(f"queries must be a scipy.sparse matrix, got {type(queries).__name__}")
        rows = self._csr_rows(sp.csr_matrix(queries), "queries")
        if not rows:
            return [], np.full((0, k), -np.inf, dtype=np.float32)
        return _pad_batch(_run_batch(self.searcher, [self._jmap(p) for p in rows], k, threads), k)


# --------------------------------------------------------------------------------------------- BM25
class LuceneBM25Index(_LuceneBase):
    """Anserini BM25 over title + text (default English analyzer; k1 = 0.9, b = 0.4 unless changed)."""

    kind = "lucene-bm25"

    def __init__(self, path: Path, manifest: dict[str, Any], k1: float = BM25_K1, b: float = BM25_B) -> None:
        super().__init__(path, manifest)
        self.k1 = float(k1)
        self.b = float(b)

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        corpus: Sequence[_DocLike],
        threads: int = 2,
        meta: Mapping[str, Any] | None = None,
    ) -> LuceneBM25Index:
        """Index ``corpus`` (objects with ``.id``, ``.text`` and optionally ``.title``) for BM25 at ``path``.

        ``contents`` = ``title + " " + text`` as in Anserini's BEIR flat indexes. Documents whose contents
        are empty are not indexed (counted as ``num_empty`` in the manifest).
        """
        require_lucene()
        threads = _check_threads(threads)
        docs = list(corpus)
        if not docs:
            raise KeytokError("corpus is empty: nothing to index")
        for i, d in enumerate(docs):
            if not hasattr(d, "id") or not hasattr(d, "text"):
                raise KeytokError(f"corpus[{i}] is a {type(d).__name__}: documents need .id and .text")
            if not isinstance(d.text, str) or not isinstance(getattr(d, "title", ""), str):
                raise KeytokError(f"corpus[{i}] (id {d.id!r}): .text and .title must be strings")
        ids = _check_doc_ids([d.id for d in docs], "corpus ids")
        contents = [f"{getattr(d, 'title', '') or ''} {d.text}".strip() for d in docs]
        meta_dict = dict(meta or {})
        try:
            json.dumps(meta_dict)
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"meta is not JSON-serialisable ({exc})") from exc

        path = Path(path)
        start = time.perf_counter()
        with atomic_dir(path) as tmp:
            coll = tmp / ".collection"
            coll.mkdir()
            for part, (lo, hi) in enumerate(_split_rows(len(docs), threads)):
                with open(coll / f"part{part:04d}.jsonl", "w", encoding="utf-8") as fh:
                    for i in range(lo, hi):
                        fh.write(json.dumps({"id": ids[i], "contents": contents[i]}, ensure_ascii=False) + "\n")
            counters = run_index_collection(
                [
                    "-collection",
                    "JsonCollection",
                    "-generator",
                    "DefaultLuceneDocumentGenerator",
                    "-input",
                    str(coll),
                    "-index",
                    str(tmp / LUCENE_DIR),
                    "-optimize",
                ],
                threads=threads,
            )
            shutil.rmtree(coll)
            _write_manifest(
                tmp,
                cls.kind,
                num_docs=len(ids),
                num_indexed=counters["indexed"],
                num_empty=len(ids) - counters["indexed"],
                analyzer="Anserini DefaultEnglishAnalyzer (Porter stemmer, English stopwords removed)",
                contents="title + ' ' + text",
                bm25={"k1": BM25_K1, "b": BM25_B},
                anserini_jar=anserini_jar().name,
                build_seconds=round(time.perf_counter() - start, 3),
                threads=threads,
                meta=meta_dict,
            )
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], k1: float = BM25_K1, b: float = BM25_B) -> LuceneBM25Index:
        """Open a BM25 index; ``k1``/``b`` default to Anserini's BEIR flat settings (0.9, 0.4)."""
        require_lucene()
        if not (k1 >= 0 and 0 <= b <= 1):
            raise KeytokError(f"BM25 parameters out of range: k1={k1} (≥ 0), b={b} (in [0, 1])")
        path = Path(path)
        return cls(path, _read_manifest(path, cls.kind), k1=k1, b=b)

    def _new_searcher(self) -> Any:
        searcher = jclass("io.anserini.search.SimpleSearcher")(str(self.path / LUCENE_DIR))
        searcher.set_bm25(self.k1, self.b)
        return searcher

    @staticmethod
    def _check_text(q: Any, what: str) -> str:
        if not isinstance(q, str):
            raise KeytokError(f"{what} must be a string, got {type(q).__name__}")
        return q

    def search(self, query: str, k: int = 10) -> SearchHits:
        """Top-``k`` ``(doc_id, BM25 score)``; a query with no indexable words returns ``[]``."""
        k = _check_k(k)
        q = self._check_text(query, "query")
        if not q.strip():
            return []
        return _hits(self.searcher.search(q, k))

    def search_batch(self, queries: Sequence[str], k: int = 10, threads: int = 1) -> BatchHits:
        """Search many query texts on ``threads`` Java threads; returns ``(ids, scores)`` (module doc)."""
        k = _check_k(k)
        threads = _check_threads(threads)
        if isinstance(queries, str):
            raise KeytokError("queries must be a list of strings, got one string: use search()")
        texts = [self._check_text(q, f"queries[{i}]") for i, q in enumerate(queries)]
        if not texts:
            return [], np.full((0, k), -np.inf, dtype=np.float32)
        return _pad_batch(_run_batch(self.searcher, texts, k, threads), k)
