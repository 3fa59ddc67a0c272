"""Choose keytok's defaults on SciFact's *train* qrels: key-token settings, feedback, fusion, expansion words.

    python experiments/sweep_bm25.py ../shared/data/beir/scifact --max-length 96

Every choice is made on the train split (809 queries); the test qrels are never read. Stages, each keeping
the best setting of the one before (coordinate-wise, nDCG@10 with ir-measures, self-hits removed):

A. key-token vectors: K (key tokens per document), centring α, M (query expansion tokens), expansion
   weight; measured by the sparse index with expanded queries. The transform stays log1p: relu gave no
   better row in a first, larger run of this sweep (centring 0), and the grid is kept small enough to run
   in about ten minutes on two cores.
B. LLM-free feedback queries: the number of BM25 first-pass documents and of feedback tokens; measured by
   the sparse index with feedback queries.
C. fusion of BM25 with the key-token runs: method (min-max, z-score, RRF) and the weights of
   ``bm25+sparse:feedback+sparse:expanded`` (``bm25+keytok``) and of ``bm25+sparse:feedback``
   (``bm25+keytok-free``); each run is its system's top 100, as the searcher fuses them.
D. document expansion: key-token words appended per document in a BM25 index (bm25x).
E. model-weighted terms (impact) fused with BM25.

The embeddings come from keytok's embedding cache (the same as ``keytok bench``), so a rerun only projects,
scores and fuses. Writes ``experiments/results/sweep_bm25_<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import RESULTS, command, run_script, write_json, write_text

from keytok.data.beir import Document, corpus_checksum, load_corpus, load_qrels, load_queries
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder
from keytok.engines.fusion import FUSIONS, fuse
from keytok.engines.lucene import LuceneBM25Index
from keytok.evaluation.metrics import evaluate
from keytok.representations.expansion import corpus_words, expansion_text, token_words
from keytok.representations.impact import model_weighted_terms
from keytok.representations.sparse import SparseEncoder, document_frequency, idf_weights

DEPTH = 100


def top_run(scores: np.ndarray, doc_ids: list[str], qids: list[str], depth: int = DEPTH) -> dict:
    """{qid: {doc: score}} of each row's top ``depth`` positive scores."""
    run = {}
    part = np.argpartition(-scores, depth, axis=1)[:, :depth]
    for r, q in enumerate(qids):
        cand = part[r]
        run[q] = {doc_ids[c]: float(scores[r, c]) for c in cand if scores[r, c] > 0}
    return run


def ndcg(run: dict, qrels: dict) -> float:
    return round(evaluate(run, qrels, ("nDCG@10",))["nDCG@10"], 4)


def bm25_run(path: Path, docs: list[Document], texts: list[str], qids: list[str], depth: int) -> dict:
    if not path.exists():
        LuceneBM25Index.build(path, [d for d in docs if d.full_text.strip()], threads=2)
    idx = LuceneBM25Index.open(path)
    ids, scores = idx.search_batch(texts, depth, threads=2)
    idx.close()
    return {
        q: dict(zip(i, s[: len(i)].tolist(), strict=True)) for q, i, s in zip(qids, ids, scores, strict=True)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="a BEIR folder with qrels/train.tsv")
    ap.add_argument("--split", default="train", help="qrels split to choose on (default: train)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="prompteol")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--name", default=None, help="results file name (default: <corpus>_<split>)")
    args = ap.parse_args()
    if args.split == "test":
        raise SystemExit("the sweep chooses defaults: run it on a training or development split, not test")
    root = Path(args.corpus)
    name = args.name or f"{root.name}_{args.split}"
    t_start = time.perf_counter()
    docs = load_corpus(root, on_empty="keep")
    doc_ids = [d.id for d in docs]
    qrels = load_qrels(root, args.split)
    allq = load_queries(root)
    qids = [q for q in qrels if q in allq]
    qtexts = [allq[q] for q in qids]
    enc = Encoder(args.model, args.method, dtype="auto", max_length=args.max_length)
    cache = EmbeddingCache()
    emb = cache.encode_corpus(
        enc, doc_ids, [d.full_text for d in docs], corpus_checksum=corpus_checksum(root)
    )
    qemb = cache.encode_corpus(enc, qids, qtexts)
    tables: dict[str, list[dict]] = {}
    work = Path(tempfile.mkdtemp(prefix="keytok-sweep-"))
    bm25 = bm25_run(work / "bm25", docs, qtexts, qids, DEPTH)
    base = {"bm25": ndcg(bm25, qrels)}
    print(f"{len(qids)} {args.split} queries; BM25 nDCG@10 {base['bm25']}", flush=True)
    dense_s = (qemb / np.linalg.norm(qemb, axis=1, keepdims=True)) @ (
        emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    ).T
    dense = top_run(dense_s + 1.0, doc_ids, qids)  # cosine + 1 > 0 keeps every document rankable
    base["dense"] = ndcg(dense, qrels)

    # ---- A: key-token vectors
    rows = []
    best_a: tuple[float, dict] = (-1.0, {})
    encoders: dict[tuple[float, str], tuple[SparseEncoder, object]] = {}
    for center, transform in itertools.product((0.0, 0.5, 1.0), ("log1p",)):
        se = SparseEncoder(enc, k_doc=512, center=center, transform=transform)
        if center:
            se.fit_center(emb)
        top = se.topk(emb, 512)
        encoders[center, transform] = (se, top)
        for k_doc in (256, 512):
            d_mat = se.vectors_from_topk(top, k_doc, rows_zero=np.abs(emb).sum(axis=1) == 0)
            idf = idf_weights(document_frequency(d_mat), d_mat.shape[0])
            for m, w in itertools.product((64, 128), (0.1, 0.3)):
                se.config = replace(se.config, expansion_weight=w)
                q = se.encode_queries(qtexts, idf, embeddings=qemb, mode="expanded", m_query=m)
                score = ndcg(top_run((q @ d_mat.T).toarray(), doc_ids, qids), qrels)
                row = {"K": k_doc, "center": center, "transform": transform, "M": m, "expansion_weight": w}
                rows.append(row | {"nDCG@10": score})
                if score > best_a[0]:
                    best_a = (score, row)
        print(f"A center={center} {transform}: best so far {best_a}", flush=True)
    tables["A_key_tokens"] = rows
    a = best_a[1]
    se, top = encoders[a["center"], a["transform"]]
    se.config = replace(se.config, k_doc=a["K"], m_query=a["M"], expansion_weight=a["expansion_weight"])
    d_mat = se.vectors_from_topk(top, a["K"], rows_zero=np.abs(emb).sum(axis=1) == 0)
    idf = idf_weights(document_frequency(d_mat), d_mat.shape[0])
    q_exp = se.encode_queries(qtexts, idf, embeddings=qemb, mode="expanded")
    expanded = top_run((q_exp @ d_mat.T).toarray(), doc_ids, qids)
    q_free = se.encode_queries(qtexts, idf, mode="llm-free")
    llm_free = top_run((q_free @ d_mat.T).toarray(), doc_ids, qids)
    base |= {"sparse:expanded": ndcg(expanded, qrels), "sparse:llm-free": ndcg(llm_free, qrels)}

    # ---- B: feedback queries (BM25 first pass, the key-token vectors of its top documents)
    pos = {d: i for i, d in enumerate(doc_ids)}
    ranked = [sorted(bm25[q], key=lambda d, q=q: -bm25[q][d]) for q in qids]
    rows, best_b = [], (-1.0, {})
    runs_b = {}
    for n_fb, terms in itertools.product((3, 5, 10), (64, 128)):
        se.config = replace(se.config, feedback_docs=n_fb, feedback_terms=terms)
        fb = [d_mat[[pos[d] for d in r[:n_fb]]] for r in ranked]
        q_fb = se.encode_queries(qtexts, idf, mode="feedback", feedback=fb)
        run = top_run((q_fb @ d_mat.T).toarray(), doc_ids, qids)
        score = ndcg(run, qrels)
        rows.append({"feedback_docs": n_fb, "feedback_terms": terms, "nDCG@10": score})
        runs_b[n_fb, terms] = run
        if score > best_b[0]:
            best_b = (score, {"feedback_docs": n_fb, "feedback_terms": terms})
    tables["B_feedback"] = rows
    b = best_b[1]
    se.config = replace(se.config, feedback_docs=b["feedback_docs"], feedback_terms=b["feedback_terms"])
    feedback = runs_b[b["feedback_docs"], b["feedback_terms"]]
    base["sparse:feedback"] = best_b[0]
    print(f"B: {best_b}", flush=True)

    # ---- C: fusion
    runs = {"bm25": bm25, "sparse:feedback": feedback, "sparse:expanded": expanded, "dense": dense}
    grid = (0.0, 0.1, 0.2, 0.3, 0.5)
    rows, best_c, best_free = [], (-1.0, {}), (-1.0, {})
    for method in FUSIONS:
        for wf, we in itertools.product(grid, grid):
            fused = fuse(
                [runs["bm25"], runs["sparse:feedback"], runs["sparse:expanded"]], method, [1.0, wf, we]
            )
            score = ndcg(fused, qrels)
            row = {"method": method, "sparse:feedback": wf, "sparse:expanded": we}
            rows.append(row | {"nDCG@10": score})
            if score > best_c[0]:
                best_c = (score, row)
            if we == 0 and score > best_free[0]:
                best_free = (score, row)
    tables["C_fusion"] = rows
    print(f"C: bm25+keytok {best_c}; bm25+keytok-free {best_free}", flush=True)
    method = best_c[1]["method"]
    rows = []
    for wd in grid[1:]:
        rows.append(
            {"method": method, "dense": wd, "nDCG@10": ndcg(fuse([bm25, dense], method, [1.0, wd]), qrels)}
        )
    tables["C_fusion_dense"] = rows
    best_dense = max(rows, key=lambda r: r["nDCG@10"])

    # ---- D: document expansion words (bm25x)
    words = token_words(se.tokenizer, se.vocab_size, corpus_words(d.full_text for d in docs))
    rows = []
    for n_words in (8, 32):
        extra = expansion_text(d_mat, words, n_words)
        expanded_docs = [
            Document(id=d.id, title=d.title, text=f"{d.text} {x}".strip())
            for d, x in zip(docs, extra, strict=True)
        ]
        run = bm25_run(work / f"bm25x-{n_words}", expanded_docs, qtexts, qids, DEPTH)
        rows.append({"expansion_words": n_words, "nDCG@10": ndcg(run, qrels)})
    tables["D_bm25x"] = rows
    best_d = max(rows, key=lambda r: r["nDCG@10"])

    # ---- E: model-weighted terms (impact), alone (LLM-free queries) and fused with BM25
    rows = []
    impact = model_weighted_terms(se, emb, [d.full_text for d in docs], expansion=64)
    iidf = idf_weights(document_frequency(impact), impact.shape[0])
    q_imp = se.encode_queries(qtexts, iidf, mode="llm-free")
    imp_run = top_run((q_imp @ impact.T).toarray(), doc_ids, qids)
    base["impact:llm-free"] = ndcg(imp_run, qrels)
    for wi in grid[1:]:
        rows.append(
            {"method": method, "impact": wi, "nDCG@10": ndcg(fuse([bm25, imp_run], method, [1.0, wi]), qrels)}
        )
    tables["E_impact"] = rows
    best_e = max(rows, key=lambda r: r["nDCG@10"])

    chosen = {
        "key_tokens": a,
        "feedback": b,
        "fusion": {
            "method": method,
            "bm25+keytok": {k: v for k, v in best_c[1].items() if k != "method"},
            "bm25+keytok-free": {
                "sparse:feedback": best_free[1]["sparse:feedback"],
                "method": best_free[1]["method"],
            },
            "dense": best_dense["dense"],
            "impact": best_e["impact"],
        },
        "bm25x": {"expansion_words": best_d["expansion_words"]},
    }
    result = {
        "command": command(__file__),
        "corpus": str(root),
        "split": args.split,
        "queries": len(qids),
        "model": args.model,
        "method": args.method,
        "max_length": args.max_length,
        "precision": enc.precision.describe(),
        "single_systems": base,
        "best": {
            "bm25+keytok": best_c[0],
            "bm25+keytok-free": best_free[0],
            "bm25+dense": best_dense["nDCG@10"],
            "bm25x": best_d["nDCG@10"],
            "bm25+impact": best_e["nDCG@10"],
        },
        "chosen": chosen,
        "tables": tables,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = RESULTS / f"sweep_bm25_{name}"
    write_json(out.with_suffix(".json"), result, result["command"])
    write_text(out.with_suffix(".md"), report(result))
    print(report(result))


def report(r: dict) -> str:
    b = r["single_systems"]["bm25"]
    lines = [
        f"# Defaults chosen on {Path(r['corpus']).name} {r['split']} qrels ({r['queries']} queries)",
        "",
        f"{r['model']}, {r['method']}, max {r['max_length']} tokens, {r['precision']}. "
        f"Command: `{r['command']}` ({r['seconds']} s). The test qrels are not read.",
        "",
        "| system | nDCG@10 (train) | × BM25 |",
        "|---|---|---|",
    ]
    for k, v in r["single_systems"].items():
        lines.append(f"| {k} | {v:.4f} | {v / b:.3f} |")
    for k, v in r["best"].items():
        lines.append(f"| {k} (best of its sweep) | {v:.4f} | {v / b:.3f} |")
    lines += ["", "Chosen:", "", "```json", json.dumps(r["chosen"], indent=2), "```", ""]
    for name, rows in r["tables"].items():
        top = sorted(rows, key=lambda x: -x["nDCG@10"])[:10]
        keys = list(top[0])
        lines += [
            f"## {name} (top 10 of {len(rows)})",
            "",
            "| " + " | ".join(keys) + " |",
            "|" + "---|" * len(keys),
        ]
        lines += ["| " + " | ".join(str(x[k]) for k in keys) + " |" for x in top]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
