"""A small held-out retrieval check for training recipes: SciFact's dev20 *train* queries over a sub-corpus.

The dev20 queries (``is_dev``: sha256 of the query id mod 5, as ``split_qrels.py`` and
``sweep_fusion_trained.py`` split them) are held out of a run trained on ``scifact:train80``. The sub-corpus is
their judged documents plus ``--distractors`` other documents drawn with a fixed seed; each model embeds both
(dense, cosine) and is scored by nDCG@10 and RR@10 on the dev20 train qrels. No test qrel is read.

    python experiments/dev_check_scifact.py --models smollm2-135m smollm2-135m-keytok ../runs/cpu-full64
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from _common import is_dev, run_script

from keytok import KeyTokenModel
from keytok.data.beir import load_corpus, load_qrels, load_queries
from keytok.evaluation.metrics import evaluate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--data", default="../../shared/data/beir/scifact", help="SciFact's BEIR folder")
    ap.add_argument("--distractors", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=64, help="tokens per text incl. prompt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    qrels = {q: j for q, j in load_qrels(args.data, "train").items() if is_dev(q)}
    queries = {q: t for q, t in load_queries(args.data).items() if q in qrels}
    docs = {d.id: d.full_text for d in load_corpus(args.data, on_empty="skip")}
    judged = sorted({d for j in qrels.values() for d in j if d in docs})
    others = sorted(set(docs) - set(judged))
    ids = judged + random.Random(args.seed).sample(others, args.distractors)
    qids = sorted(queries)
    print(
        f"dev20: {len(qids)} queries, {len(ids)} documents ({len(judged)} judged), max length {args.max_length}"
    )
    for name in args.models:
        model = KeyTokenModel(name, max_length=args.max_length)
        d = model.encode([docs[i] for i in ids], normalize=True)
        q = model.encode([queries[i] for i in qids], normalize=True)
        scores = q @ d.T
        run = {}
        for row, qid in enumerate(qids):
            top = np.argsort(-scores[row])[:100]
            run[qid] = {ids[j]: float(scores[row, j]) for j in top}
        m = evaluate(run, qrels, ("nDCG@10", "RR@10"))
        print(f"{name}: dense nDCG@10 {m['nDCG@10']:.3f}, RR@10 {m['RR@10']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)
