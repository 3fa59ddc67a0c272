"""Quality and latency of a retrieval run.

Quality comes from ir-measures (pytrec_eval underneath). Every judged query counts: a query the
system returned nothing for scores 0 (pytrec_eval alone would silently skip it, inflating the
mean). Self-retrieval — a document whose id equals the query id — is removed first, as BEIR does
for ArguAna, since a query that finds itself says nothing about retrieval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")
MEASURE_LABELS = {"nDCG@10": "nDCG@10", "R@100": "Recall@100", "RR@10": "MRR@10"}


def drop_self_hits(run: Run) -> dict[str, dict[str, float]]:
    """The run without documents whose id equals their query's id."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def ranked_run(
    ranked: Mapping[str, Sequence[str] | Sequence[tuple[str, float]]],
) -> dict[str, dict[str, float]]:
    """Ranked lists (doc ids, or ``(doc id, score)`` pairs, best first) as a run whose scores keep that
    order: pytrec_eval ranks by score and breaks ties by doc id, so tied scores would reorder the list."""
    out = {}
    for qid, hits in ranked.items():
        ids = [h if isinstance(h, str) else h[0] for h in hits]
        out[qid] = {d: float(len(ids) - i) for i, d in enumerate(ids)}
    return out


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over every judged query (missing or empty results count as 0)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    run = drop_self_hits(run)
    judged = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    totals = {str(m): 0.0 for m in parsed}
    run_for_eval = {q: dict(run[q]) for q in judged if run.get(q)}
    for metric in ir_measures.iter_calc(parsed, {q: dict(qrels[q]) for q in judged}, run_for_eval):
        totals[str(metric.measure)] += metric.value
    n = max(len(judged), 1)
    return {name: totals[str(m)] / n for name, m in zip(measures, parsed, strict=True)}


@dataclass(frozen=True)
class Latency:
    """Per-query latency figures in milliseconds, and throughput."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    qps: float
    queries: int

    @classmethod
    def from_seconds(cls, per_query_seconds: Iterable[float]) -> Latency:
        ms = np.asarray(list(per_query_seconds), dtype=np.float64) * 1000
        if ms.size == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0)
        return cls(
            p50_ms=float(np.percentile(ms, 50)),
            p95_ms=float(np.percentile(ms, 95)),
            mean_ms=float(ms.mean()),
            qps=float(1000 / ms.mean()) if ms.mean() > 0 else float("inf"),
            queries=int(ms.size),
        )


def model_flops(non_embedding_params: int, tokens: float, hidden: int = 0, vocab: int = 0) -> float:
    """Estimated forward FLOPs: 2 x non-embedding parameters per token (+ one LM-head product if used)."""
    return 2.0 * non_embedding_params * tokens + 2.0 * hidden * vocab


def non_embedding_params(model) -> int:
    """Parameters of a transformers model other than its token embeddings and LM head."""
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    out = model.get_output_embeddings()
    if out is not None:
        skip |= {id(p) for p in out.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
