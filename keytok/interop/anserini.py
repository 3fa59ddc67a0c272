"""Anserini ``JsonVectorCollection`` export: the native index's integer vectors, one JSON object per line.

Each document becomes::

    {"id": "<doc id>", "contents": "", "vector": {"t17": 3, "t2045": 12}}

The terms are the ones keytok's own Lucene impact index uses (:func:`keytok.engines.lucene.token_key`:
``"t"`` + token id) and the weights are the native index's quantised integer impacts, the same integers
``keytok index build --kind lucene`` hands to Anserini. An Anserini index of the export is therefore the
same index as keytok's ``lucene/`` engine, and a query built by :func:`anserini_query` (the query's float
weights quantised to 8 bits, as :class:`keytok.pipeline.searcher.Searcher` does for its Lucene backend)
ranks documents exactly as keytok's Lucene backend, and as the native index does for the same integer
query. Documents without a token are written as ``"vector": {}``: Anserini skips them (they could never
match), as keytok's own Lucene build does.

Index the export with Anserini (or pyserini) as an impact index, pre-tokenised::

    python -m pyserini.index.lucene --collection JsonVectorCollection --input EXPORT --index OUT \\
        --generator DefaultLuceneDocumentGenerator --impact --pretokenized --threads 2

or from Python with :func:`index_jsonvector`, which runs Anserini's ``IndexCollection`` through keytok's
Java set-up and returns a :class:`~keytok.engines.lucene.LuceneImpactIndex`. Search it with pyserini's
``LuceneImpactSearcher(OUT, None)`` (pass ``min_idf=-1`` to keep tokens that occur in every document)
and the ``{term: int}`` maps of :func:`anserini_query`.

Limits: Anserini spells a document out as each term repeated ``impact`` times, so indexing time grows with
the sum of the impacts (8-bit impacts: at most 255 per token). Lucene scores in float32 and is exact
while a score stays below 2**24. Anserini orders tied scores by doc id; the native index orders them by
insertion order, so a top-k cut inside a run of tied scores may pick other (equally scored) documents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from keytok.engines.lucene import IMPACT_INDEX_ARGS, TOKEN_PREFIX, LuceneImpactIndex
from keytok.errors import KeytokError
from keytok.interop.source import ExportSource
from keytok.utils.atomic import atomic_dir

__all__ = [
    "ANSERINI_INDEX_ARGS",
    "QUERY_LEVELS",
    "anserini_query",
    "index_jsonvector",
    "write_jsonvector",
]

#: Integer levels of an Anserini query weight: 8 bits, as keytok's own Lucene backend quantises queries.
QUERY_LEVELS = 255
#: The ``IndexCollection`` arguments keytok's Lucene impact index is built with.
ANSERINI_INDEX_ARGS = IMPACT_INDEX_ARGS
PART_NAME = "part{:05d}.jsonl"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise KeytokError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.exists() and not out.is_dir():
        raise KeytokError(f"{out} exists and is not a folder: an Anserini collection is a folder")


def write_jsonvector(
    source: ExportSource, out: str | os.PathLike[str], *, shards: int = 1, overwrite: bool = False
) -> list[Path]:
    """Write ``source`` as a JsonVectorCollection folder ``out`` (``part00000.jsonl``, ...); see the module doc.

    ``shards``: how many files to split the documents into (Anserini indexes one file per thread). The
    folder is written atomically: it appears complete or not at all. Returns the files written.
    """
    out = Path(out)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise KeytokError(f"shards must be a positive integer, got {shards!r}")
    _check_out(out, overwrite)
    csr = source.vectors
    bounds = np.linspace(0, source.n_docs, min(shards, max(source.n_docs, 1)) + 1).astype(int)
    names = []
    with atomic_dir(out) as tmp:
        for part in range(len(bounds) - 1):
            name = PART_NAME.format(part)
            with open(tmp / name, "w", encoding="utf-8") as fh:
                for row in range(int(bounds[part]), int(bounds[part + 1])):
                    a, b = csr.indptr[row], csr.indptr[row + 1]
                    vec = ",".join(
                        f'"{TOKEN_PREFIX}{t}":{w}'
                        for t, w in zip(csr.indices[a:b].tolist(), csr.data[a:b].tolist(), strict=True)
                    )
                    fh.write(
                        f'{{"id":{json.dumps(source.doc_ids[row], ensure_ascii=False)},'
                        f'"contents":"","vector":{{{vec}}}}}\n'
                    )
            names.append(name)
    return [out / n for n in names]


def anserini_query(query: Mapping[int, float] | sp.spmatrix | sp.sparray) -> tuple[dict[str, int], float]:
    """A float query vector as the ``{term: int}`` map an Anserini impact searcher takes, and its scale.

    ``query``: ``{token id: weight}`` or a 1-row sparse matrix (e.g. a row of
    :meth:`keytok.pipeline.searcher.Searcher.query_vectors`), weights ≥ 0. The weights are quantised as keytok's
    Lucene backend does: ``round(w / q_scale)`` with ``q_scale = max(w) / 255``; zeros are dropped. An
    Anserini score times ``q_scale * index scale`` is on the scale of keytok's scores.
    """
    if sp.issparse(query):
        row = sp.csr_matrix(query)
        if row.shape[0] != 1:
            raise KeytokError(f"query has {row.shape[0]} rows: one query vector expected")
        row.sum_duplicates()
        tok, w = row.indices.astype(np.int64), row.data.astype(np.float64)
    elif isinstance(query, Mapping):
        try:
            tok = np.array([int(t) for t in query], dtype=np.int64)
            w = np.array([float(v) for v in query.values()], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"query must map integer token ids to numbers ({exc})") from None
    else:
        raise KeytokError(
            f"query must be a dict {{token id: weight}} or a 1-row sparse matrix, not {type(query).__name__}"
        )
    if w.size and (not np.isfinite(w).all() or w.min() < 0):
        raise KeytokError("query weights must be finite and >= 0")
    if tok.size and tok.min() < 0:
        raise KeytokError(f"query has a negative token id ({int(tok.min())})")
    top = float(w.max()) if w.size else 0.0
    q_scale = top / QUERY_LEVELS if top > 0 else 1.0
    ints = np.rint(w / q_scale).astype(np.int64)
    keep = ints > 0
    return {
        f"{TOKEN_PREFIX}{t}": v for t, v in zip(tok[keep].tolist(), ints[keep].tolist(), strict=True)
    }, q_scale


def _collection_docs(collection: Path) -> tuple[list[Path], int, int]:
    """The collection's files, documents, and documents with a non-empty vector (checked line by line)."""
    if not collection.is_dir():
        raise KeytokError(f"Anserini collection {collection} is not a folder")
    files = sorted(p for p in collection.iterdir() if p.is_file() and p.suffix == ".jsonl")
    if not files:
        raise KeytokError(f"Anserini collection {collection} holds no .jsonl file")
    docs = nonempty = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    doc = json.loads(line)
                    vec = doc["vector"]
                    if not isinstance(doc["id"], str) or not isinstance(vec, dict):
                        raise TypeError("id must be a string and vector an object")
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise KeytokError(f"{f} line {n}: not a JsonVectorCollection document ({exc})") from None
                docs += 1
                nonempty += bool(vec)
    return files, docs, nonempty


def index_jsonvector(
    collection: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: Mapping[str, object],
    *,
    threads: int = 2,
    overwrite: bool = False,
) -> LuceneImpactIndex:
    """Index a JsonVectorCollection folder with Anserini as keytok does, and open the result.

    Runs ``IndexCollection`` with :data:`ANSERINI_INDEX_ARGS` in a child JVM (keytok's Java set-up, the
    ``lucene`` extra) and writes ``index`` atomically with a ``manifest.json`` of kind ``lucene-impact``, so
    it opens as a :class:`~keytok.engines.lucene.LuceneImpactIndex`. ``meta`` must hold ``vocab_size``
    (e.g. ``source.meta | {"scale": source.scale}``). Raises :class:`KeytokError` when the collection is
    malformed or Anserini indexes another number of documents than hold tokens.
    """
    from keytok.engines.engine import meta_dict

    meta_json = meta_dict(meta)
    if not isinstance(meta_json.get("vocab_size"), int) or meta_json["vocab_size"] < 1:
        raise KeytokError("meta must hold the vocabulary size (vocab_size, a positive integer)")
    collection = Path(collection)
    files, docs, nonempty = _collection_docs(collection)
    params = {"token_key": f"{TOKEN_PREFIX}<token id>", "collection": str(collection.resolve())}
    return LuceneImpactIndex.from_collection_files(
        index,
        files,
        meta_json,
        docs=docs,
        indexed=nonempty,
        params=params,
        threads=threads,
        overwrite=overwrite,
    )
