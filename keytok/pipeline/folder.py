"""The keytok index folder: its layout, and :func:`read_info`, which reads and checks its ``keytok.json``.

An index folder holds up to four engines over the same documents and one description::

    indexes/NAME/
      keytok.json           what the folder is: model (name + sha256), method, precision, max length,
                            calibration sha256, sparse settings (K, transform, centering, M, ...), corpus
                            checksum, kinds, doc count, and size + sha256 of the files below
      docs.jsonl            {"id", "title", "snippet"} per document, for display
      df.npy                document frequency of every token over the sparse document vectors (idf)
      center_mean.npy       the corpus mean embedding subtracted before projection (when center != 0)
      calibration.*         a copy of the calibration the vectors were made with (when one was given)
      sparse/               native inverted index (:class:`keytok.engines.sparse.SparseIndex`)
      dense/                FAISS index of the pooled embeddings (:class:`keytok.engines.dense.DenseIndex`)
      lucene/               Lucene impact index of the *same integer vectors* the native index stores
      bm25/                 Lucene BM25 over the raw text
      bm25x/                Lucene BM25 over the text + its top key tokens as words (document expansion,
                            :mod:`keytok.representations.expansion`)
      impact/               native inverted index of model-weighted terms: the text's own tokens re-weighted
                            by the LM head, plus top expansion tokens (:mod:`keytok.representations.impact`)
      impact_df.npy         document frequency of every token over the impact vectors (their idf)
      embeddings.npy        the documents' pooled embeddings (float32), kept by a shard build only, for
                            :func:`keytok.pipeline.merge.merge_indexes`

The folder is written by :mod:`keytok.pipeline.build` (and :mod:`keytok.pipeline.merge`,
:mod:`keytok.pipeline.update`) and read by :mod:`keytok.pipeline.searcher`, :mod:`keytok.pipeline.describe`
and :mod:`keytok.interop`.

**Opening** checks ``keytok.json`` (:func:`read_info`: format, self-checksum, and the size and sha256 of the
files it lists) and every engine's manifest; searching is :mod:`keytok.pipeline.searcher`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from keytok.engines.engine import manifest_int
from keytok.engines.manifest import check_files, read_checked_json
from keytok.errors import KeytokError
from keytok.pipeline.kinds import KINDS
from keytok.pipeline.kinds.impact import ImpactKind
from keytok.pipeline.kinds.sparse import SparseKind

__all__ = [
    "DF_NAME",
    "DOCS_NAME",
    "EMBEDDINGS_NAME",
    "FORMAT",
    "IMPACT_DF_NAME",
    "INFO_NAME",
    "MEAN_NAME",
    "SNIPPET_CHARS",
    "read_info",
]

FORMAT = "keytok-index-folder"
INFO_NAME = "keytok.json"
DOCS_NAME = "docs.jsonl"
DF_NAME = SparseKind.df_file
MEAN_NAME = "center_mean.npy"
IMPACT_DF_NAME = ImpactKind.df_file
EMBEDDINGS_NAME = "embeddings.npy"
SNIPPET_CHARS = 160  # characters of a document's text kept in docs.jsonl for display


def read_info(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """``keytok.json`` of an index folder, checked: format, version, self-checksum, the fields readers
    rely on (:func:`_check_info_fields`), and the size and (unless ``verify=False``) sha256 of every file
    it lists, each confined to the folder. Raises :class:`KeytokError` naming the file."""
    path = Path(path)
    raw = read_checked_json(path, INFO_NAME, FORMAT, "sha256")
    _check_info_fields(path, raw)
    try:
        entries = {e["name"]: (int(e["bytes"]), e.get("sha256")) for e in raw.get("files", {}).values()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KeytokError(f"index {path}: {INFO_NAME} lists its files badly ({exc})") from None
    check_files(path, entries, INFO_NAME, verify)
    return raw


def _check_info_fields(path: Path, raw: dict[str, Any]) -> None:
    """Refuse a ``keytok.json`` whose fields readers use as paths or sizes without further checks.

    Its checksum proves nothing against whoever wrote it: ``kinds`` become sub-folder names (``../other``
    would open another index), ``docs`` and ``vocab_size`` size the idf and the query vectors.
    """
    where = f"index {path}: {INFO_NAME}"
    kinds = raw.get("kinds")
    if (
        not isinstance(kinds, list)
        or not kinds
        or any(k not in KINDS for k in kinds)
        or len(set(kinds)) != len(kinds)
    ):
        raise KeytokError(f"{where} lists bad engine kinds {kinds!r} (each once, from {', '.join(KINDS)})")
    try:
        manifest_int(raw.get("docs"), "docs", 0)
        manifest_int(raw.get("vocab_size"), "vocab_size", 1)
        manifest_int(raw.get("hidden_size"), "hidden_size", 1)
    except ValueError as exc:
        raise KeytokError(f"{where} has a bad field ({exc})") from None
    if not isinstance(raw.get("files", {}), dict):
        raise KeytokError(f"{where} lists its files badly (not a mapping)")
