"""OpenSearch / Elasticsearch export: bulk JSON for a ``rank_features`` field, its mapping, and queries.

``write_bulk`` writes a folder::

    mapping.json          PUT /<index> body: {"mappings": {"_meta": {...}, "properties": {FIELD: {"type": "rank_features"}}}}
    bulk-00000.ndjson     POST /_bulk bodies, DOCS_PER_FILE documents each:
                          {"index": {"_index": "<index>", "_id": "<doc id>"}}
                          {"<field>": {"t17": 3, "t2045": 12}}

Feature names are keytok's token keys (``"t"`` + token id, as in its Lucene index: never the token text,
so no name has a dot or is empty whatever the vocabulary) and values are the native index's integer
impacts. :func:`sparse_query` turns a keytok query vector (``{token id: weight}`` or a 1-row sparse
matrix, e.g. a row of :meth:`keytok.pipeline.searcher.Searcher.query_vectors`) into the search body:

* ``style="rank_feature"`` (Elasticsearch ≥ 7.12 and OpenSearch): a ``bool`` of ``should`` clauses, one
  ``rank_feature`` query per query token with the ``linear`` function and ``boost`` = the query weight, so
  the score is ``Σ_t q_t · impact_t``: keytok's native score divided by the index's ``scale`` (kept in
  the mapping's ``_meta``);
* ``style="neural_sparse"`` (OpenSearch ≥ 2.14, neural-search plugin): ``{"neural_sparse": {FIELD:
  {"query_tokens": {...}}}}``, the same dot product.

No server runs here, so the export is checked against the field's documented rules instead
(:func:`check_bulk`): ``rank_features`` takes a JSON object of string feature names (no dots: Elasticsearch
refuses them) to strictly positive numbers; Lucene's ``FeatureField`` requires finite values of at least
the smallest normal float32 (1.18e-38). Limits to know:

* values keep **9 significant bits** (relative error up to 0.4 %): integers up to 512 are exact, so 8-bit
  impacts (the default) round-trip exactly, 16-bit impacts above 512 do not (``check_bulk`` counts them);
* a ``bool`` query holds at most ``indices.query.bool.max_clause_count`` clauses (1,024 by default in
  OpenSearch and in Elasticsearch before 8): :func:`sparse_query` refuses longer queries unless
  ``max_clauses`` is raised to match the server's setting;
* ``_id`` is at most 512 bytes (checked); a bulk request must stay under ``http.max_content_length``
  (100 MB by default): lower ``docs_per_file`` for very long documents;
* Lucene scores in float32, and ties are broken by Lucene's internal document order, not keytok's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.lucene import TOKEN_PREFIX
from keytok.errors import KeytokError
from keytok.interop.source import ExportSource
from keytok.utils.atomic import atomic_dir

__all__ = [
    "DEFAULT_FIELD",
    "DEFAULT_INDEX",
    "DOCS_PER_FILE",
    "MAX_CLAUSES",
    "check_bulk",
    "mapping",
    "sparse_query",
    "write_bulk",
]

DEFAULT_FIELD = "key_tokens"
DEFAULT_INDEX = "keytok"
DOCS_PER_FILE = 10_000
MAX_CLAUSES = 1024
MAX_ID_BYTES = 512
EXACT_INTEGER_LIMIT = 512  # 9 significant bits
FLOAT32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAPPING_NAME = "mapping.json"
BULK_NAME = "bulk-{:05d}.ndjson"


def _check_index_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(("_", "-", "+")) or name != name.lower():
        raise KeytokError(f"index name {name!r} must be non-empty, lowercase, and not start with _, - or +")
    if any(c in name for c in ' "*\\<|,>/?#:'):
        raise KeytokError(f"index name {name!r} contains a character OpenSearch refuses in index names")
    return name


def _check_field_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name.startswith("_") or "." in name:
        raise KeytokError(f"field name {name!r} must be non-empty, without dots, and not start with _")
    return name


def mapping(field: str = DEFAULT_FIELD, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The index-creation body: ``field`` as ``rank_features``, ``meta`` (JSON-ready) under ``_meta``."""
    _check_field_name(field)
    body: dict[str, Any] = {"mappings": {"properties": {field: {"type": "rank_features"}}}}
    if meta:
        body["mappings"]["_meta"] = dict(meta)
    return body


def _source_meta(source: ExportSource) -> dict[str, Any]:
    keep = ("model", "model_sha256", "method", "K", "calibration_sha256", "vocab_size")
    out = {k: source.meta[k] for k in keep if k in source.meta}
    out.update(
        {
            "keytok_scale": source.scale,
            "feature_names": f"{TOKEN_PREFIX}<token id>",
            "values": "integer impacts; keytok score = keytok_scale * sum of query weight x value",
        }
    )
    return out


def _bulk_lines(source: ExportSource, index: str, field: str, lo: int, hi: int) -> Iterator[str]:
    csr = source.vectors
    for row in range(lo, hi):
        doc_id = source.doc_ids[row]
        if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
            raise KeytokError(
                f"doc id {doc_id[:40]!r}… is longer than {MAX_ID_BYTES} bytes: OpenSearch refuses it"
            )
        a, b = csr.indptr[row], csr.indptr[row + 1]
        vec = ",".join(
            f'"{TOKEN_PREFIX}{t}":{w}'
            for t, w in zip(csr.indices[a:b].tolist(), csr.data[a:b].tolist(), strict=True)
        )
        action = {"index": {"_index": index, "_id": doc_id}}
        yield json.dumps(action, ensure_ascii=False) + "\n"
        yield f'{{"{field}":{{{vec}}}}}\n'


def write_bulk(
    source: ExportSource,
    out: str | os.PathLike[str],
    *,
    index: str = DEFAULT_INDEX,
    field: str = DEFAULT_FIELD,
    docs_per_file: int = DOCS_PER_FILE,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``mapping.json`` and the bulk files for ``source`` into the folder ``out``, atomically.

    Returns the files written (the mapping first). ``index`` names the target index in every action line;
    ``field`` the ``rank_features`` field. See the module doc for the format and the limits.
    """
    _check_index_name(index)
    _check_field_name(field)
    if isinstance(docs_per_file, bool) or not isinstance(docs_per_file, int) or docs_per_file < 1:
        raise KeytokError(f"docs_per_file must be a positive integer, got {docs_per_file!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise KeytokError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.exists() and not out.is_dir():
        raise KeytokError(f"{out} exists and is not a folder: an OpenSearch export is a folder")
    names = [MAPPING_NAME]
    with atomic_dir(out) as tmp:
        body = mapping(field, _source_meta(source))
        (tmp / MAPPING_NAME).write_text(
            json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        for part, lo in enumerate(range(0, source.n_docs, docs_per_file)):
            name = BULK_NAME.format(part)
            with open(tmp / name, "w", encoding="utf-8") as fh:
                fh.writelines(_bulk_lines(source, index, field, lo, min(lo + docs_per_file, source.n_docs)))
            names.append(name)
    return [out / n for n in names]


def _query_pairs(query: Mapping[int, float] | sp.spmatrix | sp.sparray) -> list[tuple[int, float]]:
    if sp.issparse(query):
        row = sp.csr_matrix(query)
        if row.shape[0] != 1:
            raise KeytokError(f"query has {row.shape[0]} rows: one query vector expected")
        row.sum_duplicates()
        pairs = list(zip(row.indices.tolist(), row.data.astype(np.float64).tolist(), strict=True))
    elif isinstance(query, Mapping):
        try:
            pairs = [(int(t), float(w)) for t, w in query.items()]
        except (TypeError, ValueError) as exc:
            raise KeytokError(f"query must map integer token ids to numbers ({exc})") from None
    else:
        raise KeytokError(
            f"query must be a dict {{token id: weight}} or a 1-row sparse matrix, not {type(query).__name__}"
        )
    for t, w in pairs:
        if t < 0 or not math.isfinite(w) or w < 0:
            raise KeytokError(
                f"query token {t} has weight {w}: token ids and weights must be >= 0 and finite"
            )
    return sorted((t, w) for t, w in pairs if w > 0)


def sparse_query(
    query: Mapping[int, float] | sp.spmatrix | sp.sparray,
    *,
    field: str = DEFAULT_FIELD,
    k: int = 10,
    style: str = "rank_feature",
    max_clauses: int = MAX_CLAUSES,
) -> dict[str, Any]:
    """The ``_search`` body that scores ``field`` by the dot product with ``query``; see the module doc.

    ``style``: ``"rank_feature"`` (bool of linear ``rank_feature`` clauses; Elasticsearch and OpenSearch)
    or ``"neural_sparse"`` (OpenSearch ≥ 2.14). Zero weights are dropped; a query with more than
    ``max_clauses`` tokens is refused in the ``rank_feature`` style (the server would refuse it).
    """
    _check_field_name(field)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise KeytokError(f"k must be a positive integer, got {k!r}")
    pairs = _query_pairs(query)
    if not pairs:
        raise KeytokError("query has no token with a positive weight: nothing to search for")
    if style == "neural_sparse":
        tokens = {f"{TOKEN_PREFIX}{t}": w for t, w in pairs}
        return {"size": k, "query": {"neural_sparse": {field: {"query_tokens": tokens}}}}
    if style != "rank_feature":
        raise KeytokError(f"unknown query style {style!r} (choose rank_feature or neural_sparse)")
    if len(pairs) > max_clauses:
        raise KeytokError(
            f"query has {len(pairs)} tokens, more than max_clauses={max_clauses} bool clauses: raise the "
            "server's indices.query.bool.max_clause_count and pass max_clauses to match"
        )
    should = [
        {"rank_feature": {"field": f"{field}.{TOKEN_PREFIX}{t}", "linear": {}, "boost": w}} for t, w in pairs
    ]
    return {"size": k, "query": {"bool": {"should": should}}}


# --------------------------------------------------------------------------------------------- checks
def _check_source(doc: Any, field: str, where: str) -> tuple[int, int]:
    """Check one document source against the ``rank_features`` rules; returns (features, inexact values)."""
    if not isinstance(doc, dict) or field not in doc:
        raise KeytokError(f"{where}: document has no {field!r} field")
    features = doc[field]
    if not isinstance(features, dict):
        raise KeytokError(
            f"{where}: {field} must be a JSON object of feature: value, not {type(features).__name__}"
        )
    names = list(features)
    values = list(features.values())
    if not all(isinstance(n, str) and n for n in names):
        raise KeytokError(f"{where}: a feature name is empty")
    dotted = next((n for n in names if "." in n), None)
    if dotted is not None:
        raise KeytokError(f"{where}: feature name {dotted!r} has a dot (rank_features refuses dots)")
    bad = next(
        (i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int | float)), None
    )
    if bad is not None:
        raise KeytokError(f"{where}: feature {names[bad]} has value {values[bad]!r}: a number is required")
    try:
        v = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise KeytokError(f"{where}: a feature value is not a finite float32") from None
    wrong = ~np.isfinite(v) | (v > FLOAT32_MAX)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise KeytokError(f"{where}: feature {names[i]} has value {values[i]!r}: must be a finite float32")
    small = v < FLOAT32_MIN_NORMAL
    if small.any():
        i = int(np.flatnonzero(small)[0])
        raise KeytokError(
            f"{where}: feature {names[i]} has value {values[i]!r}: rank_features values must be strictly "
            f"positive (at least {FLOAT32_MIN_NORMAL:.3g})"
        )
    # Lucene's FeatureField keeps 9 significant bits: the float32 bits shifted right by 15
    bits = v.astype(np.float32).view(np.uint32)
    kept = ((bits >> np.uint32(15)) << np.uint32(15)).view(np.float32).astype(np.float64)
    inexact = int(np.count_nonzero(kept != v))
    return len(features), inexact


def check_bulk(
    lines: Iterable[str] | str | os.PathLike[str], body: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Check bulk lines (or a bulk file, or an export folder with its ``mapping.json``) against the mapping.

    Every action must be ``{"index": {"_id": ...}}`` with a non-empty id of at most 512 UTF-8 bytes, every
    source must give each ``rank_features`` field of ``body`` (default: the folder's ``mapping.json``) a
    JSON object of non-empty, dot-free names to finite numbers of at least the smallest normal float32.
    Raises :class:`KeytokError` naming the line and the fault; returns counts: ``docs``, ``features``,
    ``inexact`` (values that the field's 9 significant bits do not hold exactly).
    """
    files: list[Path] = []
    if isinstance(lines, str | os.PathLike):
        p = Path(lines)
        if p.is_dir():
            if body is None:
                try:
                    body = json.loads((p / MAPPING_NAME).read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise KeytokError(f"{p}: {MAPPING_NAME} is missing or not JSON ({exc})") from None
            files = sorted(p.glob("bulk-*.ndjson"))
        elif p.is_file():
            files = [p]
        else:
            raise KeytokError(f"{p} does not exist")
    if body is None:
        raise KeytokError("no mapping given to check the documents against")
    try:
        props = body["mappings"]["properties"]
        fields = [f for f, spec in props.items() if spec.get("type") == "rank_features"]
    except (KeyError, TypeError, AttributeError):
        raise KeytokError("mapping has no mappings.properties object") from None
    if not fields:
        raise KeytokError("mapping declares no rank_features field")

    def numbered() -> Iterator[tuple[str, str]]:
        if files:
            for f in files:
                with open(f, encoding="utf-8") as fh:
                    for n, line in enumerate(fh, start=1):
                        yield f"{f} line {n}", line
        else:
            for n, line in enumerate(lines, start=1):  # type: ignore[arg-type]
                yield f"bulk line {n}", line

    counts = {"docs": 0, "features": 0, "inexact": 0}
    pending: str | None = None
    for where, line in numbered():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KeytokError(f"{where}: not valid JSON ({exc})") from None
        if pending is None:
            action = obj.get("index") if isinstance(obj, dict) and len(obj) == 1 else None
            if not isinstance(action, dict):
                raise KeytokError(f'{where}: expected an action line {{"index": {{...}}}}')
            doc_id = action.get("_id")
            if not isinstance(doc_id, str) or not doc_id or len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
                raise KeytokError(f"{where}: _id must be a non-empty string of at most {MAX_ID_BYTES} bytes")
            pending = where
            continue
        for field in fields:
            n, inexact = _check_source(obj, field, where)
            counts["features"] += n
            counts["inexact"] += inexact
        counts["docs"] += 1
        pending = None
    if pending is not None:
        raise KeytokError(f"{pending}: action line without a document after it")
    return counts
