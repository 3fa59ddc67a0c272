"""Native sparse top-10 vs brute force vs the Lucene impact index, on a real corpus with a real model.

    python experiments/check_engines.py --corpus ../shared/data/beir/scifact --out /tmp/idx-scifact

Builds (or reuses) an index folder with the sparse and lucene kinds from keytok's embedding cache, encodes the
judged test queries (expanded mode, the index defaults), and checks for every query:

1. native top-10 == brute-force dot products over the integer vectors the index stores (ids and scores);
2. native scores are within the quantisation bound ``scale / 2 * sum(q)`` of the float dot products with the
   unquantised vectors, and how often the top-10 ids are exactly the float top-10;
3. native top-10 == Lucene impact top-10 for the same integer query (8-bit query weights), scores identical.

Prints the counts and writes ``experiments/results/check_engines_<corpus>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, command, run_script, write_json

from keytok.data.beir import corpus_checksum, load_corpus, load_qrels, load_queries
from keytok.encoding.cache import EmbeddingCache
from keytok.encoding.encoder import Encoder
from keytok.engines.lucene import LuceneImpactIndex
from keytok.engines.sparse import SparseIndex
from keytok.pipeline.build import build_index
from keytok.pipeline.searcher import Searcher

HERE = Path(__file__).resolve().parent


def ranked(scores: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((np.arange(scores.size), -scores))
    return [int(i) for i in order[:k] if scores[i] > 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    k = args.k
    enc = Encoder(args.model, "prompteol", max_length=args.max_length)
    out = Path(args.out)
    if not out.exists():
        t = time.time()
        s = build_index(args.corpus, out, encoder=enc, kinds="sparse,lucene", on_empty="keep", progress=False)
        print("\n".join(s.lines()), f"({time.time() - t:.0f} s)", flush=True)
    queries = load_queries(args.corpus)
    qrels = load_qrels(args.corpus, "test")
    qids = [q for q in queries if q in qrels]
    qemb_all = EmbeddingCache().encode_corpus(enc, list(queries), list(queries.values()), progress=False)
    pos = {q: i for i, q in enumerate(queries)}
    searcher = Searcher(out, encoder=enc)
    qv = searcher.query_vectors([queries[q] for q in qids], embeddings=qemb_all[[pos[q] for q in qids]])
    docs = load_corpus(args.corpus, on_empty="keep")
    emb = EmbeddingCache().encode_corpus(
        enc,
        [d.id for d in docs],
        [d.full_text for d in docs],
        corpus_checksum=corpus_checksum(args.corpus),
        progress=False,
    )
    float_docs = searcher.sparse_encoder.encode_documents_from_embeddings(emb).tocsr()
    native = SparseIndex.open(out / "sparse")
    lucene = LuceneImpactIndex.open(out / "lucene")
    ids, ints = native.int_vectors()
    assert ids == native.doc_ids == [d.id for d in docs]
    stored = (ints.astype(np.float64) * native.scale).tocsr()
    counts = {
        "queries": 0,
        "native_eq_bruteforce_ids": 0,
        "native_eq_bruteforce_scores": 0,
        "within_quantisation_bound": 0,
        "native_eq_float_top10_ids": 0,
        "native_eq_lucene_ids": 0,
        "native_eq_lucene_scores": 0,
        "lucene_ties_at_boundary": 0,
    }
    max_rel_err = 0.0
    t_native = t_lucene = 0.0
    for r in range(qv.shape[0]):
        q = qv[r]
        qd = np.asarray(q.toarray()[0], dtype=np.float64)
        t = time.perf_counter()
        hits = native.search(q, k)
        t_native += time.perf_counter() - t
        got = [native.doc_ids.index(d) for d, _ in hits]
        got_s = np.array([s for _, s in hits])
        ref = stored @ qd
        want = ranked(ref, k)
        counts["queries"] += 1
        counts["native_eq_bruteforce_ids"] += int(got == want)
        counts["native_eq_bruteforce_scores"] += int(np.allclose(got_s, ref[want], rtol=2e-5, atol=1e-6))
        exact = float_docs @ qd
        bound = native.scale / 2 * qd.sum()
        counts["within_quantisation_bound"] += int(np.all(np.abs(exact[got] - got_s) <= bound * (1 + 1e-5)))
        counts["native_eq_float_top10_ids"] += int(ranked(exact, k) == got)
        max_rel_err = max(
            max_rel_err, float(np.max(np.abs(exact[got] - got_s) / np.maximum(exact[got], 1e-9)))
        )
        qscale = qd.max() / 255
        qi = {int(t): int(np.rint(w / qscale)) for t, w in zip(q.indices, q.data, strict=True)}
        qi = {t: w for t, w in qi.items() if w > 0}
        nat = [(d, round(s / native.scale)) for d, s in native.search(qi, k)]
        t = time.perf_counter()
        luc = [(d, int(s)) for d, s in lucene.search(qi, k)]
        t_lucene += time.perf_counter() - t
        same_scores = [s for _, s in nat] == [s for _, s in luc]
        counts["native_eq_lucene_scores"] += int(same_scores)
        if [d for d, _ in nat] == [d for d, _ in luc]:
            counts["native_eq_lucene_ids"] += 1
        elif same_scores:
            # ties: the native index orders them by insertion, Lucene by doc id; same documents above the k-th
            kth = nat[-1][1]
            if {d for d, s in nat if s > kth} == {d for d, s in luc if s > kth}:
                counts["lucene_ties_at_boundary"] += 1
    result = counts | {
        "max_relative_error_vs_float": max_rel_err,
        "scale": native.scale,
        "postings": native.manifest.counts["postings"],
        "native_ms_per_query": 1000 * t_native / max(1, counts["queries"]),
        "lucene_ms_per_query": 1000 * t_lucene / max(1, counts["queries"]),
        "query_tokens_mean": float(np.diff(qv.indptr).mean()),
    }
    print(json.dumps(result, indent=2))
    name = Path(args.corpus).name
    write_json(RESULTS / f"check_engines_{name}.json", result, command(__file__))


if __name__ == "__main__":
    run_script(main)
