"""What every export reads: the integer key-token vectors of a built index, with their ids and metadata.

An export takes the *native* sparse index's quantised vectors, never the float vectors: the integers are
what keytok searches, so an engine that imports them scores documents exactly as keytok does (up to the
one global factor ``scale``: a keytok score is ``scale * Σ_t q_t · impact_t``). Deleted documents are left
out. ``path`` may be a keytok index folder (``keytok.json`` with a ``sparse/`` engine) or a native sparse
index folder itself (``manifest.json`` of kind ``"sparse"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.lucene import TOKEN_PREFIX, token_key
from keytok.errors import KeytokError
from keytok.pipeline.kinds import NATIVE_KIND

__all__ = ["ExportSource", "load_source", "parse_token_key"]


@dataclass
class ExportSource:
    """The live documents of a native sparse index as integer vectors (see the module doc).

    ``vectors`` is ``n_docs × vocab_size`` CSR with sorted column indices and positive integer impacts
    (uint8, or uint16 for indexes built with more than 8 bits); row ``i`` belongs to ``doc_ids[i]``.
    """

    path: Path
    doc_ids: list[str]
    vectors: sp.csr_matrix
    scale: float
    bits: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Width of the token vocabulary (the matrix's columns)."""
        return int(self.vectors.shape[1])

    @property
    def n_docs(self) -> int:
        """Documents exported (live documents of the index)."""
        return len(self.doc_ids)

    def description(self) -> str:
        """One line saying where the vectors come from and how to read them (for format headers)."""
        return (
            f"keytok export of {self.path.name}: model {self.meta.get('model', '?')}, "
            f"K={self.meta.get('K', '?')}, {self.n_docs} documents, vocabulary {self.vocab_size}; "
            f"terms are {TOKEN_PREFIX}<token id>, weights are integer impacts; scale={self.scale!r} "
            "(keytok score = scale * sum of query weight x impact)"
        )


def parse_token_key(term: str) -> int:
    """The token id of a term written by :func:`keytok.engines.lucene.token_key` (``"t17"`` → 17).

    Raises :class:`KeytokError` for any other string.
    """
    digits = term[len(TOKEN_PREFIX) :] if term.startswith(TOKEN_PREFIX) else ""
    if not digits.isascii() or not digits.isdigit() or token_key(int(digits)) != term:
        raise KeytokError(f"term {term!r} is not a keytok token key ({TOKEN_PREFIX}<token id>)")
    return int(digits)


def _sparse_folder(path: Path) -> Path:
    if not path.exists():
        raise KeytokError(f"index {path} does not exist")
    if (path / "keytok.json").is_file():
        from keytok.pipeline.folder import read_info

        info = read_info(path)
        if NATIVE_KIND not in info.get("kinds", []):
            kinds = ", ".join(info.get("kinds", [])) or "none"
            raise KeytokError(
                f"index {path} has no native sparse engine (it has {kinds}): exports read its integer "
                f"vectors; rebuild it with the {NATIVE_KIND} kind"
            )
        return path / NATIVE_KIND
    if (path / "manifest.json").is_file():
        return path
    raise KeytokError(f"{path} is not a keytok index folder (no keytok.json) nor a native sparse index")


def load_source(path: str | os.PathLike[str]) -> ExportSource:
    """Open the index at ``path`` and return its live documents' integer vectors (see the module doc).

    Raises :class:`KeytokError` when ``path`` is not an index, has no native sparse engine, or fails the
    index's own checks (missing, truncated or edited files).
    """
    from keytok.engines.sparse import SparseIndex

    path = Path(path)
    index = SparseIndex.open(_sparse_folder(path))
    ids, vectors = index.int_vectors()
    vectors = sp.csr_matrix(vectors)
    vectors.sum_duplicates()
    vectors.sort_indices()
    vectors.eliminate_zeros()
    if vectors.nnz and not np.issubdtype(vectors.dtype, np.unsignedinteger):  # pragma: no cover - format
        raise KeytokError(f"index {path}: stored impacts have dtype {vectors.dtype}, not unsigned integers")
    return ExportSource(
        path=path,
        doc_ids=list(ids),
        vectors=vectors,
        scale=float(index.scale),
        bits=int(index.bits),
        meta=dict(index.meta),
    )
