"""The ``sparse`` kind: the native inverted index of the documents' key-token vectors
(:class:`keytok.engines.sparse.SparseIndex`), searched with float key-token queries."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import scipy.sparse as sp

from keytok.engines.engine import batch_lists
from keytok.pipeline.kinds.base import Hits, Kind
from keytok.representations.sparse import document_frequency, token_display

__all__ = ["SparseKind", "explain_tokens"]


def token_marks(searcher: Any, text: str, labels: set[str]) -> list[tuple[int, int, str]]:
    """Where the tokenizer puts, in ``text``, a key token that :func:`explain_tokens` named (``labels``)."""
    from keytok.representations.marks import token_marks as marks

    return marks(searcher.sparse_encoder.tokenizer, text, labels, searcher.token_label)


def explain_tokens(
    searcher: Any, native: str, row: sp.csr_matrix | None, doc_id: str
) -> list[tuple[str, float]]:
    """The tokens ``row`` shares with ``doc_id`` in the float engine ``native``, with their contributions."""
    if row is None or native not in searcher.kinds:
        return []
    tok = searcher.sparse_encoder.tokenizer
    special = {int(i) for i in tok.all_special_ids}
    return [(token_display(tok, t, special), c) for t, c in searcher.engine(native).explain(row, doc_id)]


class SparseKind(Kind):
    """The native key-token index (see the module doc); built for ``lucene`` too, which takes its integers."""

    name = "sparse"
    about = "native index of the key tokens"
    query_form = "float sparse vector"
    needs_vectors = True
    updatable = True
    recorded = True
    df_file = "df.npy"  # in the index folder: document frequency of every token over its vectors
    native = "sparse"
    fusion_weights = (
        ("sparse", 0.1),
        ("sparse:expanded", 0.1),
        ("sparse:llm-free", 0.1),
        ("sparse:feedback", 0.1),
    )
    #: where the native index is built when only ``lucene`` asked for it (dropped once Lucene has its integers)
    FOR_OTHERS = ".sparse-for-lucene"

    def engine_class(self) -> Any:
        from keytok.engines.sparse import SparseIndex

        return SparseIndex

    def build(self, job: Any) -> None:
        keep = self.name in job.config.kinds
        where = job.tmp / (self.name if keep else self.FOR_OTHERS)
        job.native = self.engine_class().build(
            where, job.ids, job.doc_vectors, job.meta, bits=job.config.bits
        )
        if keep:
            job.part(self.name, postings=int(job.native.manifest.counts["postings"]), scale=job.native.scale)

    def drop_unasked(self, job: Any) -> None:
        """Delete the native index built only for another kind's build."""
        if self.name not in job.config.kinds:
            job.native = None
            shutil.rmtree(job.tmp / self.FOR_OTHERS)

    def record(self, job: Any) -> dict[str, Any]:
        # the key-token vectors' settings, which every kind built from them shares
        return job.sparse_enc.params() | {"bits": job.config.bits}

    def settings(self, record: dict[str, Any]) -> dict[str, Any]:
        from keytok.representations.sparse import SparseConfig

        return {"sparse": SparseConfig.from_params(record), "bits": int(record["bits"])}

    def search(self, searcher: Any, texts: list[str], k: int, mode: str | None) -> Hits:
        qv = searcher.query_vectors(texts, mode, backend=self.name)
        eng = searcher.engine(self.name)
        return batch_lists(eng.search_batch(qv, k)), [qv[r] for r in range(qv.shape[0])]

    def explain(
        self, searcher: Any, row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        return explain_tokens(searcher, self.name, row, doc_id)

    def marks(self, searcher: Any, text: str, labels: set[str]) -> list[tuple[int, int, str]]:
        return token_marks(searcher, text, labels)

    def add(self, tmp: Any, searcher: Any, new: Any) -> int:
        native = self.engine_class().open(tmp / self.name, verify=False)
        native.add(new.ids, new.vectors, wait=0)
        return int(native.n_live)

    def delete(self, tmp: Any, ids: list[str], docs: int) -> int:
        return delete_native(self.engine_class(), tmp, self.name, self.df_file, ids, docs)


def delete_native(cls: Any, tmp: Any, name: str, df_name: str | None, ids: list[str], docs: int) -> int:
    """Tombstone ``ids`` in the native engine ``name`` and take their stored tokens out of ``df_name``
    (clipped to the new document count: a token that quantised to 0 was never stored, so stays counted)."""
    from keytok.utils.atomic import atomic_path

    native = cls.open(tmp / name, verify=False)
    if df_name is not None:
        df = np.load(tmp / df_name)
        for d in ids:
            tokens, _ = native.doc_vector(d)
            df[tokens] -= 1
        with atomic_path(tmp / df_name) as p, open(p, "wb") as fh:
            np.save(fh, np.clip(df, 0, docs).astype(df.dtype), allow_pickle=False)
    native.delete(ids, wait=0)
    return int(native.n_live)


def add_document_frequency(tmp: Any, df_name: str, vectors: sp.csr_matrix) -> None:
    """Add the new documents' ``vectors`` to the folder's document frequencies ``df_name``."""
    from keytok.utils.atomic import atomic_path

    df = np.load(tmp / df_name) + document_frequency(vectors)
    with atomic_path(tmp / df_name) as p, open(p, "wb") as fh:
        np.save(fh, df, allow_pickle=False)
