"""nDCG@10 of every engine of a keytok index folder, end to end (quantised index, real query encoding).

    python experiments/eval_index.py indexes/scifact ../shared/data/beir/scifact

Searches the judged test queries with each backend the folder holds (sparse in both query modes), writes
the TREC runs next to the results, and prints nDCG@10 (ir_measures), with hits whose doc id equals the
query id removed (BEIR's convention; Cranfield's query and doc ids overlap).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ir_measures
from ir_measures import nDCG

from keytok.data.beir import load_qrels, load_queries
from keytok.indexes.searcher import Searcher, write_trec_run

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("data")
    ap.add_argument("--split", default="test")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    qrels = load_qrels(args.data, args.split)
    queries = {q: t for q, t in load_queries(args.data).items() if q in qrels}
    s = Searcher(args.index)
    name = Path(args.index).name
    out = {
        "index": args.index,
        "queries": len(queries),
        "info": {k: s.info[k] for k in ("sparse", "max_length")},
    }
    combos = [(b, None) for b in s.kinds if b != "sparse"]
    if "sparse" in s.kinds:
        combos = [("sparse", "expanded"), ("sparse", "llm-free"), *combos]
    if "lucene" in s.kinds:
        combos.append(("lucene", "llm-free"))
    for backend, mode in combos:
        t = time.perf_counter()
        res = s.search_batch(queries, k=args.k + 1, backend=backend, query_mode=mode)
        secs = time.perf_counter() - t
        res = {q: [h for h in hits if h.doc_id != q][: args.k] for q, hits in res.items()}
        label = backend + (f"/{mode}" if mode else "")
        write_trec_run(
            HERE / "results" / f"run_{name}_{label.replace('/', '_')}.trec", res, tag=label.replace("/", "_")
        )
        run = {q: {h.doc_id: float(len(hits) - i) for i, h in enumerate(hits)} for q, hits in res.items()}
        v = ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]
        out[label] = {"ndcg10": round(v, 4), "seconds": round(secs, 1)}
        print(f"{label:<18} nDCG@10 {v:.4f}  ({secs:.1f} s for {len(queries)} queries)", flush=True)
    s.close()
    (HERE / "results" / f"eval_index_{name}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
