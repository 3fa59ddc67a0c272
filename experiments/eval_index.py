"""nDCG@10 of every engine of a keytok index folder, end to end (quantised index, real query encoding).

    python experiments/eval_index.py indexes/scifact ../shared/data/beir/scifact

Searches the judged test queries with each backend the folder holds (sparse in both query modes), writes
the TREC runs next to the results, and prints nDCG@10 (:func:`keytok.evaluation.metrics.evaluate`: every
judged query counts, one with no results as 0), with hits whose doc id equals the query id removed (BEIR's
convention; Cranfield's query and doc ids overlap).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import RESULTS, command, run_script, write_json

from keytok.data.beir import load_qrels, load_queries
from keytok.evaluation.metrics import evaluate, ranked_run
from keytok.pipeline.searcher import Searcher, write_trec_run


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
            RESULTS / f"run_{name}_{label.replace('/', '_')}.trec", res, tag=label.replace("/", "_")
        )
        ranked = {q: [h.doc_id for h in hits] for q, hits in res.items()}
        v = evaluate(ranked_run(ranked), qrels, ("nDCG@10",))["nDCG@10"]
        out[label] = {"ndcg10": round(v, 4), "seconds": round(secs, 1)}
        print(f"{label:<18} nDCG@10 {v:.4f}  ({secs:.1f} s for {len(queries)} queries)", flush=True)
    s.close()
    write_json(RESULTS / f"eval_index_{name}.json", out, command(__file__))


if __name__ == "__main__":
    run_script(main)
