"""Fusion weights for a model trained on SciFact's train qrels, chosen on held-out *train* queries.

A model trained on the train queries scores them too well to choose its fusion weights on them: they would
lean on the model. ``experiments/gpu_train_scifact.sh`` therefore also trains the same recipe on 80 % of
the train queries ("train80"); this script scores that model's runs on the other 20 % ("dev20": the train
queries whose sha256(id) mod 5 is 0, 169 queries) and picks, per system, the fusion method and weights with
the best nDCG@10 there. The model reported (trained on all train queries) gets the weights chosen here; the
test qrels are not read.

Runs, each its system's top 100 as the searcher fuses them: BM25 (Lucene, k1 0.9, b 0.4), dense (cosine),
key tokens with expanded queries and with LLM-free queries (the index defaults: K 512, centring 0.5, M 128,
expansion weight 0.1), model-weighted terms (impact, LLM-free queries).

    python experiments/sweep_fusion_trained.py ../shared/data/beir/scifact /work/fold_emb
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, command, is_dev, npz_rows, run_script, write_json, write_text
from sweep_bm25 import DEPTH, bm25_run, ndcg, top_run

from keytok.data.beir import load_corpus, load_qrels, load_queries
from keytok.encoding.encoder import Encoder
from keytok.engines.fusion import FUSIONS, fuse
from keytok.representations.impact import model_weighted_terms
from keytok.representations.sparse import SparseEncoder, document_frequency, idf_weights

GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="SciFact's BEIR folder")
    ap.add_argument("embeddings", help="the train80 model's <name>_corpus.npz and <name>_queries.npz")
    ap.add_argument("--base", default="smollm2-135m", help="the base model (tokenizer and LM head)")
    ap.add_argument("--out", default=str(RESULTS / "sweep_fusion_trained"))
    args = ap.parse_args()
    started = time.perf_counter()
    root, folder = Path(args.corpus), Path(args.embeddings)
    docs = load_corpus(root, on_empty="keep")
    doc_ids = [d.id for d in docs]
    allq = load_queries(root)
    qrels = {q: j for q, j in load_qrels(root, "train").items() if is_dev(q) and q in allq}
    qids = sorted(qrels)
    qtexts = [allq[q] for q in qids]
    emb = npz_rows(folder / f"{root.name}_corpus.npz", doc_ids)
    qemb = npz_rows(folder / f"{root.name}_queries.npz", qids)
    # The LM head was frozen in training: the base model's head and tokenizer project the trained embeddings.
    enc = Encoder(args.base, "prompteol", dtype="fp32")
    runs: dict[str, dict] = {}
    runs["bm25"] = bm25_run(Path(tempfile.mkdtemp(prefix="keytok-dev-")) / "bm25", docs, qtexts, qids, DEPTH)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    qunit = qemb / np.linalg.norm(qemb, axis=1, keepdims=True)
    runs["dense"] = top_run(qunit @ unit.T + 1.0, doc_ids, qids)
    se = SparseEncoder(enc)
    se.fit_center(emb)
    empty = np.abs(emb).sum(axis=1) == 0
    d_mat = se.vectors_from_topk(se.topk(emb, se.config.k_doc), se.config.k_doc, rows_zero=empty)
    idf = idf_weights(document_frequency(d_mat), d_mat.shape[0])
    for mode in ("expanded", "llm-free"):
        q = se.encode_queries(qtexts, idf, embeddings=qemb if mode == "expanded" else None, mode=mode)
        runs[f"sparse:{mode}"] = top_run((q @ d_mat.T).toarray(), doc_ids, qids)
    impact = model_weighted_terms(se, emb, [d.full_text for d in docs], expansion=64)
    q_imp = se.encode_queries(
        qtexts, idf_weights(document_frequency(impact), impact.shape[0]), mode="llm-free"
    )
    runs["impact:llm-free"] = top_run((q_imp @ impact.T).toarray(), doc_ids, qids)
    single = {name: ndcg(run, qrels) for name, run in runs.items()}
    print(f"{len(qids)} dev20 queries: {single}", flush=True)

    table = []
    for method, ws, wd in itertools.product(FUSIONS, GRID, GRID):
        if ws == wd == 0:
            continue
        fused = fuse([runs["bm25"], runs["sparse:expanded"], runs["dense"]], method, [1.0, ws, wd])
        table.append({"method": method, "sparse:expanded": ws, "dense": wd, "nDCG@10": ndcg(fused, qrels)})
    for method, wi in itertools.product(FUSIONS, GRID[1:]):
        fused = fuse([runs["bm25"], runs["impact:llm-free"]], method, [1.0, wi])
        table.append({"method": method, "impact": wi, "nDCG@10": ndcg(fused, qrels)})

    def best(pred) -> dict:
        return max((r for r in table if pred(r)), key=lambda r: r["nDCG@10"])

    chosen = {
        "bm25+sparse+dense": best(lambda r: "dense" in r and r["dense"] > 0 and r["sparse:expanded"] > 0),
        "bm25+keytok": best(lambda r: "dense" in r and r["dense"] == 0),
        "bm25+dense": best(lambda r: "dense" in r and r["sparse:expanded"] == 0),
        "bm25+impact": best(lambda r: "impact" in r),
    }
    result = {
        "command": command(__file__),
        "queries": len(qids),
        "single_systems": single,
        "chosen": chosen,
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(Path(args.out).with_suffix(".json"), result, result["command"])
    lines = [
        "# Fusion weights of the SciFact-trained model, chosen on held-out train queries (dev20)",
        "",
        f"The train80 model (same recipe, 80 % of the train queries) on the other {len(qids)} train queries; "
        "the test qrels are not read. "
        f"Command: `{result['command']}` ({result['seconds']} s).",
        "",
        "| system alone | nDCG@10 (dev20) |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in single.items()],
        "",
        "| fused system | method | weights (BM25 1) | nDCG@10 (dev20) | × BM25 |",
        "|---|---|---|---|---|",
    ]
    for name, r in chosen.items():
        w = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("method", "nDCG@10"))
        lines.append(
            f"| {name} | {r['method']} | {w} | {r['nDCG@10']:.4f} | {r['nDCG@10'] / single['bm25']:.3f} |"
        )
    write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
