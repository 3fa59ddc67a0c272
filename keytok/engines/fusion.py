"""Per-query fusion of runs: normalised convex combination (min-max or z-score) and reciprocal-rank fusion.

A run is ``{query id: {doc id: score}}``, each query's documents being that system's top hits. Fusion works
query by query, over the union of the documents the runs returned:

* ``minmax``: each run's scores mapped to [0, 1] (its best hit 1, its last hit 0), then ``Σ_r w_r · s_r``.
  PromptReps' hybrid (α = 0.5 between dense and sparse).
* ``zscore``: each run's scores standardised (mean 0, standard deviation 1 over its hits), then shifted so
  that its last hit scores 0, then ``Σ_r w_r · s_r``. Unlike min-max, one outlying top score does not squash
  the rest of the list.
* ``rrf``: ``Σ_r w_r / (k + rank_r)`` with k = 60 (Cormack et al. 2009); scores are ignored.

In every method a document missing from a run gets that run's lowest value (0), which is what it would
have at the bottom of the list: a run can only add to a document's fused score. Ties in the fused score are
broken by doc id, so a fused run is deterministic.

**What the measurements favour** depends on the model, so the weights are chosen per model and travel with it.

* An untrained model (``experiments/sweep_bm25.py`` on SciFact's train qrels, 809 queries, SmolLM2-135M
  PromptEOL; BM25 alone .6974): its runs are weak (at 512 tokens key tokens .216, dense .150 alone) and must
  stay a small correction. Min-max and z-score tie; RRF's best is BM25 itself, since a rank-only fusion
  cannot make a run small. The defaults below were chosen with documents cut to 96 tokens
  (``sweep_bm25_scifact_train.md``): BM25 + 0.1 x the key-token run (``bm25+keytok``, .6995, 1.003 x BM25),
  0.2 x dense (1.004 x), 0.2 x the model-weighted terms (1.004 x). At 512 tokens
  (``sweep_bm25_scifact_train_512.md``) the best of every way stays within 1 % of BM25 (bm25+keytok 1.010 x
  with 0.3 x key tokens + 0.1 x feedback).
* A model trained on the collection's training queries (``keytok train --qrels``, recipe in
  ``experiments/gpu_train_scifact.sh``) earns a large share: its key tokens reach .51 and its dense vectors .57
  alone. Its weights are chosen on held-out training queries (``experiments/sweep_fusion_trained.py``: a
  model trained on 80 % of SciFact's train queries, scored on the other 169): z-score, BM25 + 0.5 x key
  tokens (1.051 x BM25 there) + 0.3 x dense (1.056 x). They are recorded in the checkpoint's ``keytok.json``
  (``fusion``), and an index built with it records them (:func:`keytok.pipeline.build.build_index`); the
  searcher takes, for each part, the caller's weight, else the index's, else the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from keytok.errors import KeytokError

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_FUSION_DEPTH",
    "FUSIONS",
    "RRF_K",
    "fuse",
    "normalise",
]

Run = Mapping[str, Mapping[str, float]]  # {query id: {doc id: score}}
FUSIONS: tuple[str, ...] = ("minmax", "zscore", "rrf")
RRF_K = 60
# The default method; the default weights of each part are its kind's (keytok.pipeline.kinds), chosen with
# the measurements above; a model's own record (LoadedModel.recorded_fusion) replaces both.
DEFAULT_FUSION = "minmax"
# Each system returns this many hits to the fusion (a document below it in one run gets that run's 0).
DEFAULT_FUSION_DEPTH = 100


def normalise(docs: Mapping[str, float], method: str, rrf_k: int = RRF_K) -> dict[str, float]:
    """One query's hits ``{doc id: score}`` under ``method``'s normalisation (see the module docstring)."""
    if method not in FUSIONS:
        raise KeytokError(f"unknown fusion '{method}' (choose from {', '.join(FUSIONS)})")
    if not docs:
        return {}
    ids = list(docs)
    vals = np.fromiter((docs[d] for d in ids), dtype=np.float64, count=len(ids))
    if not np.isfinite(vals).all():
        raise KeytokError("cannot fuse a run with non-finite scores")
    if method == "rrf":
        order = sorted(range(len(ids)), key=lambda i: (-vals[i], ids[i]))
        return {ids[i]: 1.0 / (rrf_k + rank) for rank, i in enumerate(order, start=1)}
    if method == "minmax":
        lo, span = vals.min(), vals.max() - vals.min()
        out = (vals - lo) / span if span > 0 else np.ones_like(vals)
    else:
        sd = vals.std()
        z = (vals - vals.mean()) / sd if sd > 0 else np.zeros_like(vals)
        out = z - z.min() if sd > 0 else np.ones_like(vals)
    return dict(zip(ids, out.tolist(), strict=True))


def fuse(
    runs: Sequence[Run],
    method: str = "minmax",
    weights: Sequence[float] | None = None,
    *,
    depth: int | None = None,
    rrf_k: int = RRF_K,
) -> dict[str, dict[str, float]]:
    """Fuse ``runs`` query by query (see the module docstring); ``weights`` default to 1 each.

    ``depth``: keep only each fused query's best ``depth`` documents (default: all of the union).
    """
    if method not in FUSIONS:
        raise KeytokError(f"unknown fusion '{method}' (choose from {', '.join(FUSIONS)})")
    if not runs:
        raise KeytokError("fusion needs at least one run")
    w = [1.0] * len(runs) if weights is None else [float(x) for x in weights]
    if len(w) != len(runs):
        raise KeytokError(f"{len(runs)} runs but {len(w)} fusion weights")
    if any(not np.isfinite(x) or x < 0 for x in w):
        raise KeytokError(f"fusion weights must be finite and >= 0, got {w}")
    fused: dict[str, dict[str, float]] = {}
    for qid in sorted(set().union(*runs)):
        acc: dict[str, float] = {}
        for run, wr in zip(runs, w, strict=True):
            if wr == 0:
                continue
            for d, s in normalise(run.get(qid, {}), method, rrf_k).items():
                acc[d] = acc.get(d, 0.0) + wr * s
        ranked = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))
        fused[qid] = dict(ranked[:depth] if depth else ranked)
    return fused
