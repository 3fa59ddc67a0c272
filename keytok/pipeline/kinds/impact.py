"""The ``impact`` kind: a native inverted index of model-weighted terms, the text's own tokens re-weighted
by the LM head plus top expansion tokens (:mod:`keytok.representations.impact`), searched with float
key-token queries weighted by the idf of its own vectors (where df is close to the words' document
frequency)."""

from __future__ import annotations

from typing import Any

from keytok.pipeline.kinds.sparse import SparseKind, add_document_frequency

__all__ = ["ImpactKind"]


class ImpactKind(SparseKind):
    """The native index of model-weighted terms (see the module doc)."""

    name = "impact"
    about = "model-weighted terms"
    df_file = "impact_df.npy"
    native = "impact"
    fusion_weights = (("impact", 0.2),)

    def build(self, job: Any) -> None:
        from keytok.representations.impact import model_weighted_terms
        from keytok.representations.sparse import document_frequency

        n_exp = job.config.impact_expansion
        texts = [d.full_text for d in job.docs]
        vectors = model_weighted_terms(job.sparse_enc, job.emb, texts, expansion=n_exp)
        job.save_npy(self.df_file, document_frequency(vectors))
        meta = job.meta | {"impact_expansion": n_exp}
        impact = self.engine_class().build(job.tmp / self.name, job.ids, vectors, meta, bits=job.config.bits)
        job.part(self.name, postings=int(impact.manifest.counts["postings"]), scale=impact.scale)

    def record(self, job: Any) -> dict[str, Any]:
        return {
            "expansion": job.config.impact_expansion,
            "weight": "softplus(logit - threshold of the top-X)",
        }

    def settings(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"impact_expansion": int(record["expansion"])}

    def add(self, tmp: Any, searcher: Any, new: Any) -> int:
        """Model-weighted terms of the new documents into the engine and ``impact_df.npy``."""
        from keytok.representations.impact import model_weighted_terms

        expansion = int(searcher.info[self.name]["expansion"])
        vectors = model_weighted_terms(searcher.sparse_encoder, new.emb, new.texts, expansion=expansion)
        impact = self.engine_class().open(tmp / self.name, verify=False)
        impact.add(new.ids, vectors, wait=0)
        add_document_frequency(tmp, self.df_file, vectors)
        return int(impact.n_live)
