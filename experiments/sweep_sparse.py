"""Choose SparseEncoder defaults by measurement: nDCG@10 per K / M / transform / centering / expansion weight.

Reads the embeddings cached by ``experiments/encode_beir.py`` (same model, method, max length), so the
sweep itself only projects through the LM head and scores with sparse matrix products.

    python experiments/sweep_sparse.py --max-length 256 cranfield scifact

nDCG@10 on the test qrels (Cranfield: all qrels), hits whose doc id equals the query id removed (BEIR's
evaluation does the same; Cranfield's query and doc ids overlap), computed by
:func:`keytok.evaluation.metrics.evaluate` (every judged query counts). Results go to
``experiments/results/sweep_sparse_<dataset>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import RESULTS, add_model_args, command, run_script, write_json

from keytok.data.beir import corpus_checksum, load_corpus, load_qrels, load_queries
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder
from keytok.evaluation.metrics import evaluate, ranked_run
from keytok.representations.sparse import SparseEncoder, document_frequency, idf_weights

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "beir"


def topn(
    scores: np.ndarray, doc_ids: list[str], qids: list[str], n: int = 10
) -> dict[str, list[tuple[str, float]]]:
    out = {}
    kk = n + 1
    part = np.argpartition(-scores, kk, axis=1)[:, :kk]
    for r, q in enumerate(qids):
        cand = part[r]
        s = scores[r, cand]
        order = np.lexsort((cand, -s))
        hits = [
            (doc_ids[c], float(scores[r, c])) for c in cand[order] if doc_ids[c] != q and scores[r, c] > 0
        ]
        out[q] = hits[:n]
    return out


def ndcg10(ranked: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]]) -> float:
    """nDCG@10 of ranked hit lists, as every keytok evaluation computes it."""
    return evaluate(ranked_run(ranked), qrels, ("nDCG@10",))["nDCG@10"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+")
    add_model_args(ap)
    ap.add_argument("--centers", default="0,0.25,0.5,0.75,1.0")
    ap.add_argument("--ks", default="64,128,256,512,1024")
    ap.add_argument("--ms", default="0,16,32,64,128,256")
    ap.add_argument("--betas", default="0.25,0.5,1,2,4")
    ap.add_argument("--transforms", default="log1p,relu,raw")
    args = ap.parse_args()
    centers = [float(x) for x in args.centers.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    ms = [int(x) for x in args.ms.split(",")]
    betas = [float(x) for x in args.betas.split(",")]
    transforms = args.transforms.split(",")
    enc = Encoder(args.model, args.method, max_length=args.max_length)
    cache = EmbeddingCache()
    for name in args.datasets:
        root = DATA / name
        queries_all = load_queries(root)
        try:
            qrels = load_qrels(root, "test")
        except Exception:
            qrels = load_qrels(root, "train")
        qids = [q for q in queries_all if q in qrels]
        qemb_all = cache.encode_corpus(enc, list(queries_all), list(queries_all.values()), progress=False)
        pos = {q: i for i, q in enumerate(queries_all)}
        qemb = qemb_all[[pos[q] for q in qids]]
        qtexts = [queries_all[q] for q in qids]
        docs = load_corpus(root, on_empty="keep")
        doc_ids = [d.id for d in docs]
        demb = cache.encode_corpus(
            enc, doc_ids, [d.full_text for d in docs], corpus_checksum=corpus_checksum(root), progress=False
        )
        empty = np.abs(demb).sum(1) == 0
        print(
            f"## {name}: {len(docs)} docs ({int(empty.sum())} empty), {len(qids)} judged queries", flush=True
        )
        results = []
        # dense baseline: cosine of the pooled vectors (and of centred vectors)
        for alpha in (0.0, 0.5, 1.0):
            mean = demb[~empty].mean(0)
            dn = demb - alpha * mean
            qn = qemb - alpha * mean
            dn = dn / np.linalg.norm(dn, axis=1, keepdims=True).clip(1e-12)
            qn = qn / np.linalg.norm(qn, axis=1, keepdims=True).clip(1e-12)
            dn[empty] = 0
            ranked = topn(qn @ dn.T, doc_ids, qids)
            v = ndcg10(ranked, qrels)
            results.append({"kind": "dense", "center": alpha, "ndcg10": v})
            print(f"dense center={alpha}: {v:.4f}", flush=True)
        for alpha in centers:
            t0 = time.time()
            base = SparseEncoder(enc, center=alpha)
            if alpha:
                base.fit_center(demb)
            dtop = base.topk(demb, max(ks))
            qtop = base.topk(qemb, max(ms) or 1)
            print(f"center={alpha}: projected in {time.time() - t0:.0f}s", flush=True)
            for lower in (False, True):
                base.case_variants = lower
                own = [base.own_tokens(t) for t in qtexts]
                rows = np.concatenate([np.full(len(o), r) for r, o in enumerate(own)])
                cols = np.concatenate([np.asarray(o, dtype=np.int64) for o in own])
                for transform in transforms:
                    base.transform = transform
                    for K in ks:
                        D = base.vectors_from_topk(dtop, K, rows_zero=empty)
                        idf = idf_weights(document_frequency(D), D.shape[0])
                        DT = D.T.tocsr()
                        for use_idf in (True, False):
                            w = idf if use_idf else np.ones_like(idf)
                            own_m = sp.csr_matrix(
                                (w[cols], (rows, cols)), shape=(len(qids), D.shape[1]), dtype=np.float32
                            )
                            own_s = (own_m @ DT).toarray()
                            for M in ms:
                                if M:
                                    E = base.vectors_from_topk(qtop, M).multiply(w[None, :]).tocsr()
                                    exp_s = (E @ DT).toarray()
                                for beta in betas if M else [0.0]:
                                    s = own_s + beta * exp_s if M else own_s
                                    v = ndcg10(topn(s, doc_ids, qids), qrels)
                                    results.append(
                                        {
                                            "kind": "sparse",
                                            "center": alpha,
                                            "case_variants": lower,
                                            "transform": transform,
                                            "K": K,
                                            "idf": use_idf,
                                            "M": M,
                                            "beta": beta,
                                            "ndcg10": v,
                                        }
                                    )
                                # expansion only (no own tokens), for reference
                                if M and use_idf:
                                    v = ndcg10(topn(exp_s, doc_ids, qids), qrels)
                                    results.append(
                                        {
                                            "kind": "sparse-expansion-only",
                                            "center": alpha,
                                            "case_variants": lower,
                                            "transform": transform,
                                            "K": K,
                                            "idf": use_idf,
                                            "M": M,
                                            "beta": None,
                                            "ndcg10": v,
                                        }
                                    )
            best = max(
                (r for r in results if r["kind"] == "sparse" and r["center"] == alpha),
                key=lambda r: r["ndcg10"],
            )
            print(f"center={alpha}: best {best} ({time.time() - t0:.0f}s)", flush=True)
        out = write_json(
            RESULTS / f"sweep_sparse_{name}.json",
            {"dataset": name, "max_length": args.max_length, "results": results},
            command(__file__),
            indent=0,
        )
        best = sorted((r for r in results if r["kind"] == "sparse"), key=lambda r: -r["ndcg10"])[:15]
        print("top configurations:")
        for r in best:
            print(r)
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    run_script(main)
