"""Model-weighted terms: a document's own tokens, re-weighted by the LM head, plus its top expansion tokens.

The key-token vectors of :mod:`keytok.representations.sparse` keep a document's top-K logits, and a document's own
words are rarely among them: exact matching, BM25's strength, is lost. DeepImpact and SPLADE keep the exact
terms and re-weight them. Here the weights come from the same projection as the key tokens, with no
training: a token ``t`` of document ``d`` gets

    w(d, t) = softplus(s_t - τ_d),    s = lm_head(adjust(e_d)),

where ``τ_d`` is the document's ``(X+1)``-th largest logit (the threshold of its top-X expansion tokens):
a word the model ranks among the document's top tokens weighs more than 0.69 (softplus(0)), a word it
ranks far below weighs close to 0 but is never dropped, so every exact match still counts. The top-X
expansion tokens get the same formula, so the two parts share one scale. The tokens of the text are those
an LLM-free query is looked up with (:meth:`SparseEncoder.own_tokens`: the tokenisation and each word's
``"word"`` / ``" word"`` forms), so a query word finds the document's form of it.

**Measured, and not a default system**: on SciFact train (``experiments/sweep_bm25.py``), LLM-free
queries over these vectors give .1707 (the key-token index: .1022; BM25: .6974), and fused with BM25
(weight 0.2, min-max) .7000, +0.4 %: the own-token matches are there, but untrained head weights rank a
document's words far worse than BM25's tf-idf does, which is why DeepImpact and SPLADE learn their term
weights. The kind stays available (``--kind impact``) for trained checkpoints, where the head's weights
are what training shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from keytok.errors import KeytokError
from keytok.representations.sparse import SparseEncoder

__all__ = ["DEFAULT_IMPACT_EXPANSION", "model_weighted_terms"]

DEFAULT_IMPACT_EXPANSION = 64


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x).astype(np.float32)


def model_weighted_terms(
    sparse_encoder: SparseEncoder,
    embeddings: np.ndarray,
    texts: Sequence[str],
    expansion: int = DEFAULT_IMPACT_EXPANSION,
    batch: int = 256,
) -> sp.csr_matrix:
    """CSR float32 [n, vocab]: own tokens of each text and its top-``expansion`` tokens, weighted as above.

    ``embeddings`` [n, hidden] are the texts' embeddings (a zero row, for an empty text, gives an empty row).
    """
    import torch

    enc = sparse_encoder._require_model("model-weighted terms")
    texts = list(texts)
    x_all = np.asarray(embeddings, dtype=np.float32)
    if x_all.ndim != 2 or x_all.shape[0] != len(texts):
        raise KeytokError(f"{len(texts)} texts but embeddings of shape {x_all.shape}")
    if expansion < 0:
        raise KeytokError(f"expansion must be >= 0, got {expansion}")
    empty = np.abs(x_all).sum(axis=1) == 0
    weight = enc.head_model.lm_head_weight
    vocab = sparse_encoder.vocab_size
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for lo in range(0, len(texts), batch):
        hi = min(len(texts), lo + batch)
        top = sparse_encoder.topk(x_all[lo:hi], max(expansion, 1))
        adj = torch.as_tensor(sparse_encoder.adjust(x_all[lo:hi]))
        for r in range(hi - lo):
            i = lo + r
            if empty[i]:
                continue
            own = np.asarray(sparse_encoder.own_tokens(texts[i]), dtype=np.int64)
            with torch.inference_mode():
                s_own = (weight[torch.as_tensor(own)].float() @ adj[r]).numpy() if own.size else np.zeros(0)
            ids = np.concatenate([own, top.ids[r, :expansion]]) if expansion else own
            s = np.concatenate([s_own, top.scores[r, :expansion]]) if expansion else s_own
            ids, first = np.unique(ids, return_index=True)
            w = _softplus(s[first] - top.threshold[r] if expansion else s[first] - top.scores[r, 0])
            rows.append(np.full(ids.size, i, dtype=np.int64))
            cols.append(ids)
            vals.append(w)
    if not rows:
        return sp.csr_matrix((len(texts), vocab), dtype=np.float32)
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(texts), vocab),
        dtype=np.float32,
    )
    m.sum_duplicates()
    m.eliminate_zeros()
    return m
