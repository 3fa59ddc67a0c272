"""The ``dense`` kind: the FAISS index of the documents' pooled embeddings
(:class:`keytok.engines.dense.DenseIndex`), searched with the query's embedding."""

from __future__ import annotations

from typing import Any

import numpy as np

from keytok.engines.engine import batch_lists
from keytok.errors import KeytokError
from keytok.pipeline.kinds.base import Hits, Kind

__all__ = ["DenseKind"]


class DenseKind(Kind):
    """The FAISS index of the pooled embeddings (see the module doc)."""

    name = "dense"
    about = "FAISS over the embeddings"
    query_form = "embedding"
    updatable = True
    recorded = True
    fusion_weights = (("dense", 0.2),)

    def engine_class(self) -> Any:
        from keytok.engines.dense import DenseIndex

        return DenseIndex

    def build(self, job: Any) -> None:
        # Documents without text have no embedding: like Lucene, the dense index leaves them out
        # (a zero vector would still be returned, with score 0, when k exceeds the matches).
        has_text = np.flatnonzero(~job.empty)
        ids = job.ids
        factory = job.config.factory
        dense = self.engine_class().build(
            job.tmp / self.name, [ids[i] for i in has_text], job.emb[has_text], job.meta, factory=factory
        )
        job.part(self.name, dim=dense.dim, factory=factory)

    def record(self, job: Any) -> dict[str, Any]:
        return {"factory": job.config.factory, "metric": "ip", "normalize": True}

    def settings(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"factory": record["factory"]}

    def search(self, searcher: Any, texts: list[str], k: int, mode: str | None) -> Hits:
        eng = searcher.engine(self.name)
        return batch_lists(eng.search_batch(searcher.query_embeddings(texts), k)), [None] * len(texts)

    def add(self, tmp: Any, searcher: Any, new: Any) -> int:
        """Append the non-empty new documents' embeddings (a build leaves empty ones out of FAISS too)."""
        dense = self.engine_class().open(tmp / self.name, verify=False)
        rows = np.flatnonzero(~new.empty)
        dense.add([new.ids[i] for i in rows], new.emb[rows])
        dense.save()
        return len(dense)

    def delete(self, tmp: Any, ids: list[str], docs: int) -> int:
        """Rebuild the FAISS index from its stored vectors without ``ids`` (FAISS renumbers on removal)."""
        cls = self.engine_class()
        gone = set(ids)
        dense = cls.open(tmp / self.name, verify=False)
        keep = [i for i, d in enumerate(dense.doc_ids) if d not in gone]
        if len(keep) == len(dense):
            return len(dense)
        try:
            vectors = dense.index.reconstruct_n(0, dense.index.ntotal)
        except RuntimeError:
            factory = dense.manifest.params.get("factory")
            raise KeytokError(
                f"index {tmp.parent}: the dense engine ({factory!r}) cannot give its vectors back to be rebuilt "
                "without the deleted documents; delete refused (build the index again)"
            ) from None
        rebuilt = cls.build(
            None, [dense.doc_ids[i] for i in keep], vectors[keep], dense.meta,
            factory=dense.manifest.params["factory"], metric=dense.metric, normalize=dense.normalize,
        )  # fmt: skip
        rebuilt.save(tmp / self.name, overwrite=True)
        return len(rebuilt)
