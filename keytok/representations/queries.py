"""Query vectors in the forms the engines take: float key-token queries made integer for an impact engine, and
the feedback documents' vectors gathered into one matrix per query.

**Integer queries.** An impact engine that scores integers (Lucene) takes the float query vector quantised
to 8 bits per query, like the document impacts: ``round(q / q_scale)`` with ``q_scale = max(q) / 255``;
its scores times ``q_scale`` (and the documents' scale) are on the same scale as the float engine's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["QUERY_LEVELS", "feedback_matrix", "integer_queries"]

QUERY_LEVELS = 255  # integer query weights: 8 bits, like the document impacts


def integer_query(row: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
    """One float query row as integers from 0 to :data:`QUERY_LEVELS`, and the scale that maps them back."""
    top = float(row.data.max()) if row.nnz else 0.0
    qscale = top / QUERY_LEVELS if top > 0 else 1.0
    q = row.copy()
    q.data = np.rint(q.data.astype(np.float64) / qscale)
    q.eliminate_zeros()
    return q.astype(np.int64), qscale


def integer_queries(queries: sp.csr_matrix) -> tuple[sp.csr_matrix, list[float]]:
    """Every row of ``queries`` made integer (:func:`integer_query`): the int64 matrix and each row's scale."""
    rows, scales = [], []
    for r in range(queries.shape[0]):
        q, s = integer_query(queries[r])
        rows.append(q)
        scales.append(s)
    if not rows:
        return sp.csr_matrix(queries.shape, dtype=np.int64), []
    return sp.vstack(rows, format="csr"), scales


def feedback_matrix(doc_vectors: Sequence[tuple[np.ndarray, np.ndarray]], vocab: int) -> sp.csr_matrix:
    """The feedback documents of one query, ``(token ids, float weights)`` each, as a CSR ``[docs, vocab]``."""
    if not doc_vectors:
        return sp.csr_matrix((0, vocab), dtype=np.float32)
    rows = [np.full(tok.size, r) for r, (tok, _) in enumerate(doc_vectors)]
    cols = [tok for tok, _ in doc_vectors]
    vals = [w.astype(np.float32) for _, w in doc_vectors]
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(doc_vectors), vocab),
        dtype=np.float32,
    )
