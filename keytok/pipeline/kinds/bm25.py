"""The ``bm25`` and ``bm25x`` kinds: Lucene BM25 over the documents' text
(:class:`keytok.engines.lucene.LuceneBM25Index`), and over the text plus its top key tokens as words
(document expansion, :mod:`keytok.representations.expansion`). Both are searched with the query's text."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp

from keytok.engines.engine import batch_lists
from keytok.pipeline.kinds.base import Hits, Kind

__all__ = ["BM25Kind", "BM25XKind"]


class BM25Kind(Kind):
    """Lucene BM25 over the raw text (see the module doc); it reads no model."""

    name = "bm25"
    about = "BM25 over the text"
    query_form = "text"
    uses_model = False
    needs_java = True
    fusion_weights = (("bm25", 1.0),)

    def engine_class(self) -> Any:
        from keytok.engines.lucene import LuceneBM25Index

        return LuceneBM25Index

    def build(self, job: Any) -> None:
        self._build(job, list(job.docs), job.meta | {"corpus_sha256": job.checksum})

    def _build(self, job: Any, docs: list[Any], meta: dict[str, Any]) -> None:
        with self.engine_class().build(
            job.tmp / self.name, docs, threads=job.config.threads, meta=meta
        ) as bm25:
            job.part(self.name, indexed=bm25.num_docs)

    def search(self, searcher: Any, texts: list[str], k: int, mode: str | None) -> Hits:
        return batch_lists(searcher.engine(self.name).search_batch(texts, k)), [None] * len(texts)

    def explain(
        self, searcher: Any, row: sp.csr_matrix | None, text: str, doc_id: str
    ) -> list[tuple[str, float]]:
        return searcher.engine(self.name).explain(text, doc_id)

    def marks(self, searcher: Any, text: str, labels: set[str]) -> list[tuple[int, int, str]]:
        from keytok.representations.marks import mark_words

        return mark_words(text, searcher.engine(self.name).terms_at(text), labels)

    def note(self, info: dict[str, Any]) -> str:
        from keytok.engines.lucene import BM25_B, BM25_K1

        return f"k1={BM25_K1}, b={BM25_B}"


class BM25XKind(BM25Kind):
    """BM25 over each document's text plus its top key tokens as words (document expansion)."""

    name = "bm25x"
    about = "BM25 over the text + its key tokens as words"
    needs_vectors = True
    recorded = True
    fusion_weights = (("bm25x", 1.0),)

    def build(self, job: Any) -> None:
        from keytok.data.beir import Document
        from keytok.representations.expansion import corpus_words, expansion_text, token_words

        enc, n_words = job.sparse_enc, job.config.expansion_words
        words = token_words(enc.tokenizer, enc.vocab_size, corpus_words(d.full_text for d in job.docs))
        extra = expansion_text(job.doc_vectors, words, n_words)
        expanded = [
            Document(id=d.id, title=d.title, text=f"{d.text} {x}".strip() if x else d.text)
            for d, x in zip(job.docs, extra, strict=True)
            if d.full_text.strip()
        ]
        self._build(job, expanded, job.meta | {"corpus_sha256": job.checksum, "expansion_words": n_words})

    def record(self, job: Any) -> dict[str, Any]:
        return {"expansion_words": job.config.expansion_words}

    def settings(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"expansion_words": int(record["expansion_words"])}

    def note(self, info: dict[str, Any]) -> str:
        words = info.get(self.name, {}).get("expansion_words", "?")
        return f"{super().note(info)}; text + top {words} key-token words"
