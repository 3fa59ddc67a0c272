"""The ``lucene`` kind: a Lucene impact index of the *same integer vectors* the native index stores
(:class:`keytok.engines.lucene.LuceneImpactIndex`), searched with the key-token query made integer.

Its queries are quantised to 8 bits per query (:func:`keytok.representations.queries.integer_queries`) and
its scores reported as ``lucene_score * q_scale * doc_scale``, on the native engine's float scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.engine import batch_lists
from keytok.pipeline.kinds.base import Hits, Kind
from keytok.pipeline.kinds.sparse import SparseKind, explain_tokens, token_marks
from keytok.representations.queries import integer_queries

__all__ = ["LuceneKind"]


class LuceneKind(Kind):
    """The Lucene impact index of the native index's integers (see the module doc)."""

    name = "lucene"
    about = "Lucene impact index of the key tokens"
    query_form = "int sparse vector"
    needs_vectors = True
    needs_java = True
    updatable = True
    df_file = SparseKind.df_file  # the same vectors
    native = SparseKind.name
    built_from = SparseKind.name
    fusion_weights = (("lucene", 0.1),)

    def engine_class(self) -> Any:
        from keytok.engines.lucene import LuceneImpactIndex

        return LuceneImpactIndex

    def build(self, job: Any) -> None:
        int_ids, int_vectors = job.native.int_vectors()
        meta = job.meta | {"scale": job.native.scale}
        with self.engine_class().build(
            job.tmp / self.name, int_ids, int_vectors, meta, threads=job.config.threads
        ) as lucene:
            job.part(self.name, indexed=lucene.num_docs)
        SparseKind().drop_unasked(job)

    def search(self, searcher: Any, texts: list[str], k: int, mode: str | None) -> Hits:
        qv = searcher.query_vectors(texts, mode, backend=self.name)
        eng = searcher.engine(self.name)
        doc_scale = float(eng.meta.get("scale", 1.0))
        int_qv, qscales = integer_queries(qv)
        hits = batch_lists(eng.search_batch(int_qv, k))
        results = [[(d, x * qs * doc_scale) for d, x in h] for h, qs in zip(hits, qscales, strict=True)]
        rows = [int_qv[r].astype(np.float32) * np.float32(qs) for r, qs in enumerate(qscales)]
        return results, rows

    def explain(
        self, searcher: Any, row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        return explain_tokens(searcher, SparseKind.name, row, doc_id)

    def marks(self, searcher: Any, text: str, labels: set[str]) -> list[tuple[int, int, str]]:
        return token_marks(searcher, text, labels)

    def add(self, tmp: Any, searcher: Any, new: Any) -> int:
        return self._rebuild(tmp)

    def delete(self, tmp: Any, ids: list[str], docs: int) -> int:
        return self._rebuild(tmp)

    def _rebuild(self, tmp: Any) -> int:
        """Rebuilt from the updated native index's live integers (as a build does)."""
        from keytok.engines.manifest import Manifest

        meta = Manifest.load(tmp / self.name, verify=False).meta
        ids, ints = SparseKind().engine_class().open(tmp / SparseKind.name, verify=False).int_vectors()
        with self.engine_class().build(tmp / self.name, ids, ints, meta, threads=1, overwrite=True) as lucene:
            return int(lucene.num_docs)
